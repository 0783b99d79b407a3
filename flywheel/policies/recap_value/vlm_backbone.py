"""The `vlm` preset's trunk: SigLIP vision + a small Gemma-family LM on stock transformers 5.

Sequence fed to the LM: [image tokens per camera] [one state token] [task text tokens]; the value
is read from the masked mean of the LM's last hidden states. Pre-trained weights are loaded from
local directories when given (no hub access at run time); otherwise a small random model is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, GemmaConfig, SiglipVisionConfig, SiglipVisionModel

from flywheel.policies.recap_value.configuration_recap_value import VLMSettings


class ByteTokenizer:
    """Fallback when no tokenizer directory is given (tests, random init): UTF-8 bytes + 1."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            codes = [min(b + 1, self.vocab_size - 1) for b in text.encode()[:max_length]]
            ids[row, : len(codes)] = torch.tensor(codes, dtype=torch.long)
        return ids, (ids != 0).long()


class HFTokenizer:
    def __init__(self, path: str):
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return out["input_ids"], out["attention_mask"]


def build_vision(cfg: VLMSettings) -> SiglipVisionModel:
    dtype = getattr(torch, cfg.dtype)
    if cfg.vision_path:
        return SiglipVisionModel.from_pretrained(cfg.vision_path, dtype=dtype)
    config = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    return SiglipVisionModel(config).to(dtype)


def build_language(cfg: VLMSettings) -> nn.Module:
    dtype = getattr(torch, cfg.dtype)
    if cfg.language_path:
        # AutoModel gives the bare decoder (GemmaModel, Gemma2Model, Gemma3TextModel, ...).
        return AutoModel.from_pretrained(cfg.language_path, dtype=dtype)
    config = GemmaConfig(
        vocab_size=cfg.lm_vocab,
        hidden_size=cfg.lm_hidden,
        intermediate_size=4 * cfg.lm_hidden,
        num_hidden_layers=cfg.lm_layers,
        num_attention_heads=cfg.lm_heads,
        num_key_value_heads=1,
        head_dim=cfg.lm_head_dim,
    )
    return AutoModel.from_config(config).to(dtype)


class VLMTrunk(nn.Module):
    def __init__(self, cfg: VLMSettings, state_dim: int, num_cameras: int):
        super().__init__()
        self.cfg = cfg
        self.vision = build_vision(cfg) if num_cameras else None
        self.language = build_language(cfg)
        width = self.language.config.hidden_size
        self.out_dim = width
        if self.vision is not None:
            self.image_proj = nn.Linear(self.vision.config.hidden_size, width)
        self.state_proj = nn.Sequential(nn.Linear(state_dim, width), nn.GELU(), nn.Linear(width, width))
        tokenizer_path = cfg.tokenizer_path or cfg.language_path
        vocab = self.language.config.vocab_size
        self.tokenizer = HFTokenizer(tokenizer_path) if tokenizer_path else ByteTokenizer(vocab)

    def forward(self, state: torch.Tensor, images: list[torch.Tensor], tasks: list[str]) -> torch.Tensor:
        parts = [self._image_tokens(img) for img in images] + [self.state_proj(state).unsqueeze(1)]
        ids, text_mask = self.tokenizer(tasks, self.cfg.max_text_tokens)
        ids, text_mask = ids.to(state.device), text_mask.to(state.device)
        parts.append(self.language.get_input_embeddings()(ids))
        embeds = torch.cat([p.to(parts[-1].dtype) for p in parts], dim=1)
        prefix = embeds.shape[1] - ids.shape[1]
        mask = torch.cat([torch.ones(len(ids), prefix, dtype=torch.long, device=ids.device), text_mask], 1)
        hidden = self.language(inputs_embeds=embeds, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        return (hidden * weights).sum(1) / weights.sum(1)

    def _image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        size = self.vision.config.image_size
        pixels = F.interpolate(image.float(), size=(size, size), mode="bilinear", align_corners=False)
        pixels = (pixels * 2.0 - 1.0).to(self.vision.dtype)  # SigLIP expects [-1, 1]
        return self.image_proj(self.vision(pixel_values=pixels).last_hidden_state.float())
