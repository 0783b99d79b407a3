"""What the benchmarks (and some tests) run on: a tiny pi_star_recap for the sim, small datasets."""

from __future__ import annotations

from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from transformers import GemmaConfig, GemmaModel, SiglipVisionConfig, SiglipVisionModel

from flywheel.policies.pi_star_recap import (
    PiStarRECAPConfig,
    PiStarRECAPPolicy,
    make_pi_star_recap_pre_post_processors,
)

SIM_STATE_DIM, SIM_ACTION_DIM = 39, 4


def tiny_sim_policy_config(chunk_size: int = 50, cfg_scale: float = 1.0, **overrides) -> PiStarRECAPConfig:
    """`overrides`: other PiStarRECAPConfig fields (e.g. state_in_prompt)."""
    return PiStarRECAPConfig(
        preset="tiny",
        device="cpu",
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        cfg_scale=cfg_scale,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (SIM_STATE_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (SIM_ACTION_DIM,))},
        **overrides,
    )


def tiny_sim_checkpoint(path: Path, seed: int = 0, chunk_size: int = 50, cfg_scale: float = 1.0) -> Path:
    """A randomly initialised tiny pi_star_recap for the sim, saved the LeRobot way (with
    identity-ish normalization stats), so the daemon and lerobot can load it."""
    torch.manual_seed(seed)
    cfg = tiny_sim_policy_config(chunk_size, cfg_scale)
    stats = {}
    for key, n in (("observation.state", SIM_STATE_DIM), ("action", SIM_ACTION_DIM)):
        ones = torch.ones(n)
        stats[key] = {"mean": 0 * ones, "std": ones, "min": -ones, "max": ones, "q01": -ones, "q99": ones}
    pre, post = make_pi_star_recap_pre_post_processors(cfg, dataset_stats=stats)
    for part in (PiStarRECAPPolicy(cfg), pre, post):
        part.save_pretrained(path)
    return path


def pi05_base_state_dict(
    r: dict, max_action_dim: int = 32, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A random state dict in LeRobot's pi05_base key layout, built from transformers' own SigLIP and
    Gemma modules (not from this policy), at the sizes in `r` (a preset's architecture fields).
    On a GPU, `device="cuda"` makes the full-size one in seconds (benchmarks/gpu.py)."""
    with torch.device(device):
        return {k: v.to(dtype).contiguous() for k, v in _pi05_base_tensors(r, max_action_dim).items()}


def _pi05_base_tensors(r: dict, max_action_dim: int) -> dict[str, torch.Tensor]:
    pg = "paligemma_with_expert.paligemma."
    vision = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=r["vision_width"],
            intermediate_size=r["vision_mlp_dim"],
            num_hidden_layers=r["vision_depth"],
            num_attention_heads=r["vision_heads"],
            patch_size=r["vision_patch_size"],
            image_size=r["image_size"],
            vision_use_head=False,
        )
    )
    language = GemmaModel(
        GemmaConfig(
            vocab_size=r["vocab_size"],
            hidden_size=r["vlm_width"],
            intermediate_size=r["vlm_mlp_dim"],
            num_hidden_layers=r["vlm_depth"],
            num_attention_heads=r["num_heads"],
            num_key_value_heads=r["num_kv_heads"],
            head_dim=r["head_dim"],
        )
    )
    sd = {f"{pg}model.vision_tower.{k}": v for k, v in vision.state_dict().items()}
    sd |= {f"{pg}model.language_model.{k}": v for k, v in language.state_dict().items()}
    sd[f"{pg}model.multi_modal_projector.linear.weight"] = torch.randn(r["vlm_width"], r["vision_width"])
    sd[f"{pg}model.multi_modal_projector.linear.bias"] = torch.randn(r["vlm_width"])
    sd[f"{pg}lm_head.weight"] = sd[f"{pg}model.language_model.embed_tokens.weight"].clone()
    w, hd, h, kv, mlp = (
        r["expert_width"],
        r["head_dim"],
        r["num_heads"],
        r["num_kv_heads"],
        r["expert_mlp_dim"],
    )
    ex = "paligemma_with_expert.gemma_expert.model."
    for i in range(r["expert_depth"]):
        layer = f"{ex}layers.{i}."
        sd[layer + "self_attn.q_proj.weight"] = torch.randn(h * hd, w)
        sd[layer + "self_attn.k_proj.weight"] = torch.randn(kv * hd, w)
        sd[layer + "self_attn.v_proj.weight"] = torch.randn(kv * hd, w)
        sd[layer + "self_attn.o_proj.weight"] = torch.randn(w, h * hd)
        sd[layer + "mlp.gate_proj.weight"] = torch.randn(mlp, w)
        sd[layer + "mlp.up_proj.weight"] = torch.randn(mlp, w)
        sd[layer + "mlp.down_proj.weight"] = torch.randn(w, mlp)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            sd[f"{layer}{norm}.dense.weight"] = torch.randn(3 * w, w)
            sd[f"{layer}{norm}.dense.bias"] = torch.randn(3 * w)
    sd[f"{ex}norm.dense.weight"] = torch.randn(3 * w, w)
    sd[f"{ex}norm.dense.bias"] = torch.randn(3 * w)
    sd["action_in_proj.weight"], sd["action_in_proj.bias"] = torch.randn(w, max_action_dim), torch.randn(w)
    sd["action_out_proj.weight"], sd["action_out_proj.bias"] = (
        torch.randn(max_action_dim, w),
        torch.randn(max_action_dim),
    )
    for name in ("time_mlp_in", "time_mlp_out"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch.randn(w, w), torch.randn(w)
    return sd
