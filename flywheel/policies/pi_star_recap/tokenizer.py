"""Prompt tokenizers: a self-contained byte tokenizer, and a local SentencePiece one for pi05 weights.

No hub downloads are possible, so the default is a byte-level tokenizer with a fixed vocabulary:
ids 0-255 are bytes, 256-511 are the 256 state bins (one token per state dimension keeps the prompt
short: pi0.5's text digits would cost about four byte tokens per dimension), then pad, bos, eos.
With `tokenizer_path` the PaliGemma tokenizer is loaded from disk and the state is written as digits,
exactly as pi0.5 does, so pretrained pi05_base weights see the prompt format they were trained on.
"""

from typing import Protocol

NUM_BYTES = 256
NUM_STATE_BINS = 256
STATE_BIN_OFFSET = NUM_BYTES
PAD_ID = NUM_BYTES + NUM_STATE_BINS
BOS_ID = PAD_ID + 1
EOS_ID = PAD_ID + 2
BYTE_VOCAB_SIZE = EOS_ID + 1


class PromptTokenizer(Protocol):
    """A prompt is two pieces: the context (task and state), which every CFG branch shares, and the
    suffix (advantage indicator, then "Action: "), which differs between branches."""

    pad_id: int

    def encode_context(self, task: str, state_bins: list[int] | None) -> list[int]: ...

    def encode_suffix(self, indicator: str | None) -> list[int]: ...


def clean_task(task: str) -> str:
    """pi0.5's task cleaning: underscores and newlines become spaces."""
    return task.strip().replace("_", " ").replace("\n", " ")


def indicator_text(indicator: str | None) -> str:
    """'Advantage: positive;\\n' after the state and before the action; empty when dropped (CFG)."""
    return "" if indicator is None else f"Advantage: {indicator};\n"


class ByteTokenizer:
    """Bytes and state bins to ids; no files, no training, identical on every machine."""

    pad_id = PAD_ID

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_context(self, task: str, state_bins: list[int] | None) -> list[int]:
        if state_bins is None:  # state_in_prompt=False: the state reaches the policy another way
            return [BOS_ID, *self.encode_text(f"Task: {clean_task(task)};\n")]
        return (
            [BOS_ID]
            + self.encode_text(f"Task: {clean_task(task)}, State: ")
            + [STATE_BIN_OFFSET + b for b in state_bins]
            + self.encode_text(";\n")
        )

    def encode_suffix(self, indicator: str | None) -> list[int]:
        return self.encode_text(indicator_text(indicator) + "Action: ")


class SentencePieceTokenizer:
    """The PaliGemma tokenizer from a local directory, with pi0.5's text prompt format."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0

    def encode_context(self, task: str, state_bins: list[int] | None) -> list[int]:
        if state_bins is None:
            text = f"Task: {clean_task(task)};\n"
        else:
            text = f"Task: {clean_task(task)}, State: {' '.join(map(str, state_bins))};\n"
        return self._tok(text, add_special_tokens=True)["input_ids"]

    def encode_suffix(self, indicator: str | None) -> list[int]:
        return self._tok(f"{indicator_text(indicator)}Action: ", add_special_tokens=False)["input_ids"]


def make_tokenizer(tokenizer_path: str | None) -> PromptTokenizer:
    return ByteTokenizer() if tokenizer_path is None else SentencePieceTokenizer(tokenizer_path)
