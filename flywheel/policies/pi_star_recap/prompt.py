"""Building the prefix prompt: task text, 256-bin state, and the RECAP advantage indicator.

A prompt is a context ("Task: ..., State: ...;\\n"), shared by the positive and unconditioned branches
of classifier-free guidance, and a suffix ("Advantage: positive;\\nAction: ", or "Action: " when the
indicator is dropped). The network lets the suffix attend to the context but not the other way round,
so the context is encoded once for both branches.
"""

import torch
from torch import Tensor

from flywheel.policies.pi_star_recap.tokenizer import NUM_STATE_BINS, PromptTokenizer

POSITIVE = "positive"
NEGATIVE = "negative"
# Ids of the indicator for the learned indicator embedding (`indicator_conditioning`): 0 = dropped.
INDICATOR_IDS: dict[str | None, int] = {None: 0, NEGATIVE: 1, POSITIVE: 2}


def discretize_state(state: Tensor, max_state_dim: int) -> list[list[int]]:
    """Normalized state (about [-1, 1]) to 256 bins per dimension, zero-padded like pi0.5.

    Dimensions beyond max_state_dim are kept rather than truncated: losing state is worse than a
    prompt slightly longer than pi05_base saw.
    """
    pad = max(0, max_state_dim - state.shape[-1])
    state = torch.nn.functional.pad(state.float(), (0, pad))
    edges = torch.linspace(-1.0, 1.0, NUM_STATE_BINS + 1, device=state.device)[:-1]
    bins = torch.bucketize(state.contiguous(), edges, right=True) - 1
    return bins.clamp(0, NUM_STATE_BINS - 1).tolist()


def indicators_from_labels(positive: Tensor, dropout: float, generator: torch.Generator | None = None):
    """Per-sample indicator words; each dropped (None) with probability `dropout` (paper: 0.3).

    Dropping trains the same network as an unconditioned policy, which classifier-free guidance needs.
    """
    drop = torch.rand(positive.shape[0], generator=generator) < dropout
    words = [POSITIVE if bool(p) else NEGATIVE for p in positive.reshape(-1).tolist()]
    return [None if d else w for w, d in zip(words, drop.tolist(), strict=True)]


def indicator_ids(indicators: list[str | None], device: torch.device) -> Tensor:
    """[len(indicators)] long: 0 dropped, 1 negative, 2 positive (INDICATOR_IDS)."""
    return torch.tensor([INDICATOR_IDS[i] for i in indicators], dtype=torch.long, device=device)


def tokenize_contexts(
    tokenizer: PromptTokenizer,
    tasks: list[str],
    state_bins: list[list[int]] | None,
    max_length: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """The shared part of each prompt (task, and state unless state_bins is None), truncated to
    max_length tokens."""
    pairs = zip(tasks, state_bins if state_bins is not None else [None] * len(tasks), strict=True)
    rows = [tokenizer.encode_context(task, bins)[:max_length] for task, bins in pairs]
    return _right_padded(rows, tokenizer.pad_id, device)


def tokenize_suffixes(
    tokenizer: PromptTokenizer, indicators: list[str | None], device: torch.device
) -> tuple[Tensor, Tensor]:
    """The per-branch end of each prompt: the indicator (absent when dropped), then "Action: "."""
    return _right_padded([tokenizer.encode_suffix(ind) for ind in indicators], tokenizer.pad_id, device)


def _right_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token ids [len(rows), longest] and their validity mask."""
    length = max(len(x) for x in rows)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return tokens.to(device), mask.to(device)
