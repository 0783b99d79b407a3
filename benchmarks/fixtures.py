"""What the benchmarks (and some tests) run on: a tiny pi_star_recap for the sim, small datasets."""

from __future__ import annotations

from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from flywheel.policies.pi_star_recap import (
    PiStarRECAPConfig,
    PiStarRECAPPolicy,
    make_pi_star_recap_pre_post_processors,
)

SIM_STATE_DIM, SIM_ACTION_DIM = 39, 4


def tiny_sim_policy_config(chunk_size: int = 50, cfg_scale: float = 1.0) -> PiStarRECAPConfig:
    return PiStarRECAPConfig(
        preset="tiny",
        device="cpu",
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        cfg_scale=cfg_scale,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (SIM_STATE_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (SIM_ACTION_DIM,))},
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
