"""Checks when a pi_star_recap policy is built and when it first trains (config_checks.py has the
ones made with the config):

- `check_build` before any weight is allocated: size on a CPU, where the weights come from; it says
  nothing about a checkpoint being reloaded, whose weights are all set;
- `check_training_batch` on training batches, once per process: the labels the loss weights need.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from flywheel.policies.pi_star_recap import batch_inputs as bi
from flywheel.policies.pi_star_recap.config_checks import default_of
from flywheel.policies.pi_star_recap.network import PiStarRECAPNetwork

if TYPE_CHECKING:
    from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig

log = logging.getLogger(__name__)

# Above this many parameters a CPU build gets a message first: the pi05 preset (3.35 B) took 14 GB
# and did not finish one training step in 6 minutes on the 2-core development machine.
CPU_PARAMETER_LIMIT = 100_000_000


def check_build(cfg: PiStarRECAPConfig, base: str | None, new_model: bool) -> None:
    """Before the network is allocated: its size on a CPU, and (for a new model) where weights come
    from. `base` is the weights path the policy will load; `new_model` is False for a checkpoint."""
    _check_cpu_size(cfg)
    if new_model:
        _check_weight_source(cfg, base)


def parameter_count(cfg: PiStarRECAPConfig) -> int:
    """Parameters of the network `cfg` describes, counted on the meta device (no memory, ~0.3 s)."""
    with torch.device("meta"):
        return sum(p.numel() for p in PiStarRECAPNetwork(cfg).parameters())


def _check_cpu_size(cfg: PiStarRECAPConfig) -> None:
    if str(cfg.device) != "cpu":
        return
    count = parameter_count(cfg)
    if count > CPU_PARAMETER_LIMIT:
        log.warning(
            "pi_star_recap: building a %.2f B-parameter model (preset=%r) on the CPU (device='cpu'). "
            "At this size training needs about 14 GB of memory and minutes per step on a CPU (one "
            "step did not finish in 6 minutes on a 2-core machine). For a CPU run pass "
            "--policy.preset=tiny (0.59 M parameters); the pi05 preset is meant for a GPU.",
            count / 1e9,
            cfg.preset,
        )


def _check_weight_source(cfg: PiStarRECAPConfig, base: str | None) -> None:
    name = cfg.vlm_model_name
    if base is not None:
        if name != default_of(cfg, "vlm_model_name") and Path(name).resolve() != Path(base).resolve():
            log.warning(
                "pi_star_recap: vlm_model_name=%r is not read: base_model_path=%r is set and its "
                "weights are loaded instead.",
                name,
                base,
            )
        if cfg.tokenizer_path is None:
            log.warning(
                "pi_star_recap: tokenizer_path=None with pretrained weights from %r: the built-in byte "
                "tokenizer is used, whose ids mean nothing to those weights. Pass "
                "--policy.tokenizer_path=<local PaliGemma tokenizer dir>.",
                base,
            )
        return
    if name != default_of(cfg, "vlm_model_name") or cfg.preset != "tiny":
        # The tiny preset with the default name is random init by design: no warning there.
        log.warning(
            "pi_star_recap: vlm_model_name=%r is not a local directory and base_model_path is unset, "
            "so no pretrained weights are loaded (nothing is downloaded): the whole %r-preset model "
            "(SigLIP, projector, Gemma, action expert) starts from random initialisation, with the "
            "preset's sizes. To start from weights pass a local folder of HF PaliGemma "
            "model*.safetensors as --policy.vlm_model_name, or LeRobot's pi05_base as "
            "--policy.base_model_path.",
            name,
            cfg.preset,
        )
    for field in ("freeze_vlm", "train_expert_only"):
        if getattr(cfg, field):
            log.warning(
                "pi_star_recap: %s=True freezes a VLM prefix that was randomly initialised (no pretrained "
                "weights are loaded, see vlm_model_name / base_model_path): it stays random for the whole "
                "run.",
                field,
            )


def check_training_batch(policy: nn.Module, batch: dict) -> None:
    """On training batches: the labels the seed's loss weights need. Once per process, not per policy:
    the trainer and the demo train many policies on the same kind of data."""
    if not policy.training or {"data_type", "advantage"} <= _WARNED_BATCH:
        return
    cfg = policy.config
    weights_matter = len(set(cfg.data_type_weights)) > 1 or cfg.balance_data_types
    if weights_matter and bi.first_present(batch, bi.DATA_TYPE_KEYS) is None and _first("data_type"):
        log.warning(
            "pi_star_recap: the training batch has no data type (%s), so demo_weight=%r, auto_weight=%r, "
            "intervention_weight=%r and balance_data_types=%r have no effect on the loss: every sample "
            "weighs 1. (flywheel's own training weights the data types in its sampler instead: "
            "--weights.* of examples/train_pi_star_recap.py.)",
            " / ".join(bi.DATA_TYPE_KEYS),
            cfg.demo_weight,
            cfg.auto_weight,
            cfg.intervention_weight,
            cfg.balance_data_types,
        )
    recap = cfg.advantage_estimator == "recap"
    if recap and bi.first_present(batch, bi.ADVANTAGE_KEYS) is None and _first("advantage"):
        log.warning(
            "pi_star_recap: the training batch has no advantage label (%s): every frame is conditioned "
            "on 'Advantage: positive', which is plain fine-tuning (the paper's treatment of "
            "demonstration-only data). `flywheel label` writes observation.advantage_positive.",
            " / ".join(bi.ADVANTAGE_KEYS),
        )


# The batch warnings already given in this process.
_WARNED_BATCH: set[str] = set()


def _first(key: str) -> bool:
    if key in _WARNED_BATCH:
        return False
    _WARNED_BATCH.add(key)
    return True
