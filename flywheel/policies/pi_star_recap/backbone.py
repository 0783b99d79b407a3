"""PaliGemma prefix + Gemma action expert, built from stock transformers 5 modules.

Module names mirror LeRobot's pi05 (`paligemma_with_expert.paligemma.model.*`,
`paligemma_with_expert.gemma_expert.model.*`) so the pi05_base checkpoint maps onto this model with a
prefix change only (see weights.py). The PaliGemma LM head is not built: actions never need logits, and
in the checkpoint it is tied to the token embedding anyway.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from transformers.models.paligemma.modeling_paligemma import PaliGemmaModel

from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig
from flywheel.policies.pi_star_recap.layers import KV, GemmaExpert, prefix_layer


def _gemma_config(cfg: PiStarRECAPConfig, width: int, depth: int, mlp_dim: int) -> GemmaConfig:
    return GemmaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=width,
        intermediate_size=mlp_dim,
        num_hidden_layers=depth,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        hidden_activation="gelu_pytorch_tanh",
    )


def paligemma_config(cfg: PiStarRECAPConfig) -> PaliGemmaConfig:
    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_width,
        intermediate_size=cfg.vision_mlp_dim,
        num_hidden_layers=cfg.vision_depth,
        num_attention_heads=cfg.vision_heads,
        patch_size=cfg.vision_patch_size,
        image_size=cfg.image_size,
        vision_use_head=False,
    )
    text = _gemma_config(cfg, cfg.vlm_width, cfg.vlm_depth, cfg.vlm_mlp_dim)
    return PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        vocab_size=cfg.vocab_size,
        projection_dim=cfg.vlm_width,
        hidden_size=cfg.vlm_width,
    )


@dataclass
class ExpertPrefix:
    """What every denoising step of a chunk reads from the prefix, prepared once per chunk: the
    per-layer keys and values, the key mask with the action tokens appended, and the action tokens'
    rotary angles."""

    kv: list[KV]
    mask: Tensor  # [rows, 1, 1, prefix + chunk] bool
    cos: Tensor
    sin: Tensor


class PaliGemmaContainer(nn.Module):
    """Holds PaliGemmaModel under `.model`, matching the checkpoint's `paligemma.model.*` names."""

    def __init__(self, config: PaliGemmaConfig) -> None:
        super().__init__()
        self.model = PaliGemmaModel(config)


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, cfg: PiStarRECAPConfig) -> None:
        super().__init__()
        self.paligemma = PaliGemmaContainer(paligemma_config(cfg))
        expert_cfg = _gemma_config(cfg, cfg.expert_width, cfg.expert_depth, cfg.expert_mlp_dim)
        self.gemma_expert = GemmaExpert(expert_cfg)
        self.gradient_checkpointing = False
        if cfg.vlm_depth != cfg.expert_depth:
            raise ValueError("the expert attends layer by layer to the prefix: depths must match")

    @property
    def language_model(self) -> nn.Module:
        return self.paligemma.model.language_model

    def _run(self, fn, *args):
        if self.gradient_checkpointing and self.training:
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def embed_image(self, pixels: Tensor) -> Tensor:
        """SigLIP tokens projected to the prefix width (no 1/sqrt(width) factor: as openpi, not HF)."""
        model = self.paligemma.model
        hidden = self._run(lambda x: model.vision_tower(x).last_hidden_state, pixels)
        return model.multi_modal_projector(hidden)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Text embeddings scaled by sqrt(width), which transformers 5's Gemma embedding does itself
        (in the weights' dtype, as pi05 in LeRobot 0.6); images are not scaled (pi0.5 does the same)."""
        return self.language_model.embed_tokens(tokens)

    def rotary(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return self.language_model.rotary_emb(x, positions)

    def encode_prefix(self, embs: Tensor, positions: Tensor, attention: Tensor) -> list[KV]:
        """Run the prefix under a boolean [B, 1, L, L] attention mask; return every layer's K and V."""
        cos, sin = self.rotary(embs, positions)
        h, kvs = embs, []
        for layer in self.language_model.layers:
            h, kv = self._run(prefix_layer, layer, h, cos, sin, attention)
            kvs.append(kv)
        return kvs

    def prepare_expert(self, prefix_kv: list[KV], prefix_mask: Tensor, chunk: int) -> ExpertPrefix:
        """The prefix as the action expert reads it for a chunk of `chunk` action tokens."""
        n_prefix = prefix_mask.sum(dim=1, keepdim=True)
        positions = n_prefix + torch.arange(chunk, device=prefix_mask.device)[None, :]
        cos, sin = self.rotary(prefix_kv[0][0], positions)  # the keys give dtype and device
        own = torch.ones(prefix_mask.shape[0], chunk, dtype=torch.bool, device=prefix_mask.device)
        mask = torch.cat([prefix_mask, own], dim=1)[:, None, None, :]
        return ExpertPrefix(prefix_kv, mask, cos, sin)

    def run_expert(self, embs: Tensor, modulations: list[Tensor], prefix: ExpertPrefix) -> Tensor:
        """Action tokens attend to the cached prefix KV and to each other (bidirectionally).

        embs and the norms' modulations (GemmaExpert.model.modulations) have B rows; the prefix B or
        branches x B rows (CFG: the same actions under each prompt suffix). The output has the
        prefix's rows.
        """
        h = embs
        layers = self.gemma_expert.model.layers
        for i, (layer, kv) in enumerate(zip(layers, prefix.kv, strict=True)):
            layer_modulations = (modulations[2 * i], modulations[2 * i + 1])
            h = self._run(layer, h, layer_modulations, prefix.cos, prefix.sin, kv, prefix.mask)
        out, _ = self.gemma_expert.model.norm(h, modulations[-1])
        return out
