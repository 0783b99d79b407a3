"""The methods compared by the demo: what each trains on, and how its frames are weighted.

Every method starts from the same SFT policy (iteration 0) and gets the same number of training
steps at the same batch size on the same dataset; only the sampling weights (and, for RECAP, the
advantage indicator in the prompt) differ:

    sft_all       every frame, uniformly (no advantages)
    filtered_sft  frames of successful episodes + the operator's intervention frames
    awr           the seed's IQL estimator: frames drawn in proportion to min(exp(A / 0.5), 100)
    recap         the RECAP-labeled dataset (value function, advantages, indicator in the prompt),
                  the trainer's data-type weights; evaluated conditioned on "Advantage: positive"
    recap_cfg     the same recap model, evaluated with classifier-free guidance (cfg_scale)
    recap_gt      RECAP with the sim's ground-truth indicator instead of the value function's: the
                  good operator's frames and the operator's takeover frames positive, all else
                  negative. With good_only it bounds what labels and policy could reach.
    good_only     the good operator's demonstrations only (the ceiling)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins

from flywheel.contracts.dataset import FrameType
from flywheel.demo.collect import REPO_ID
from flywheel.policies.pi_star_recap import PiStarRECAPConfig
from flywheel.recap.indicator_balance import indicator_balanced_weights
from flywheel.recap.iql import awr_weights
from flywheel.recap.labeling import Labels
from flywheel.recap.quality import skill_of
from flywheel.recap.sampler import DataTypeWeights, frame_weights
from flywheel.recap.source import Source
from flywheel.recap.writer import check_output_root, label_columns, write_labeled
from trainer.train_policy import TrainPolicyConfig, train_policy

# Methods that are trained (recap_cfg reuses the recap model).
TRAINED = ("sft_all", "filtered_sft", "awr", "recap", "recap_gt", "good_only")
# Methods trained on a RECAP-labeled copy, conditioned on "positive" when evaluated.
CONDITIONED = ("recap", "recap_gt")


@dataclass
class MethodData:
    """What one method trains on: the dataset root and per-frame sampling weights."""

    dataset_root: Path
    weights: np.ndarray


def build_base(
    dataset_root: Path,
    out: Path,
    chunk_size: int,
    seed: int,
    warmup_steps: int = 20,
    advantage_dropout: float = 0.3,
) -> Path:
    """An untrained tiny pi_star_recap with the dataset's normalization, saved the LeRobot way."""
    register_third_party_plugins()
    torch.manual_seed(seed)
    meta = LeRobotDatasetMetadata(REPO_ID, root=dataset_root)
    cfg = PiStarRECAPConfig(
        preset="tiny",
        device="cpu",
        chunk_size=chunk_size,
        n_action_steps=chunk_size,
        # The preset warms up over 100 steps: most of a short post-training run here.
        scheduler_warmup_steps=warmup_steps,
        # Saved in the base's config: every method trained from it (RECAP included) uses it.
        advantage_dropout=advantage_dropout,
    )
    policy = make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    for part in (policy, pre, post):
        part.save_pretrained(out)
    return out


def train(
    dataset_root: Path,
    init_from: Path,
    weights: np.ndarray,
    out: Path,
    steps: int,
    batch_size: int,
    seed: int,
) -> Path:
    """`trainer.train_policy` (the trainer's accelerate loop) with per-frame sampling weights."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "sample_weights.npy", weights)
    return train_policy(
        TrainPolicyConfig(
            dataset_root=dataset_root,
            repo_id=REPO_ID,
            init_from=init_from,
            output_dir=out,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            device="cpu",
            save_every=10**9,  # one checkpoint at the end is enough here
            log_every=50,
            trackers=[],
            sample_weights=out / "sample_weights.npy",
        )
    )


def with_cfg_scale(pretrained: Path, out: Path, cfg_scale: float) -> Path:
    """A copy of a pi_star_recap folder whose config asks for classifier-free guidance."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(pretrained, out)
    config = json.loads((out / "config.json").read_text())
    config["cfg_scale"] = cfg_scale
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def frame_quality(source: Source) -> np.ndarray:
    """Per frame: the operator skill of demo frames ('good' / 'bad'), '' for policy episodes."""
    per_episode = []
    for operator, data_type in zip(source.episodes.operator, source.episodes.data_type, strict=True):
        skill = skill_of(operator) if data_type == "demo" else None
        per_episode.append("" if skill is None else ("good" if skill == "good" else "bad"))
    return np.asarray(per_episode, dtype=object)[source.frames.episode]


def sft_weights(source: Source) -> np.ndarray:
    return np.ones(len(source.frames))


def filtered_weights(source: Source) -> np.ndarray:
    successful = source.episodes.success[source.frames.episode]
    intervention = source.frame_data_type_ids() == FrameType.INTERVENTION
    return (successful | intervention).astype(np.float64)


def good_only_weights(source: Source) -> np.ndarray:
    return (frame_quality(source) == "good").astype(np.float64)


def ground_truth_positive(source: Source) -> np.ndarray:
    """Per frame, what a perfect labeler would call better than typical: the good operator's demo
    frames and the operator's frames in policy episodes (takeovers); everything else negative."""
    quality = frame_quality(source)
    takeover = (quality == "") & source.frames.intervention
    return (quality == "good") | takeover


def write_ground_truth_labels(source: Source, labeled: Labels, out: Path) -> Path:
    """A copy of `source` labeled like `flywheel label` writes it, with the ground-truth indicator.
    Value and advantage columns are the value function's (for the record); only the indicator,
    which is all the policy sees, is the truth."""
    positive = ground_truth_positive(source)
    columns = label_columns(labeled.values, labeled.advantages, positive)
    report = {"ground_truth": "sim operator skill and takeovers", "positive": float(positive.mean())}
    check_output_root(source.root, out, overwrite=False)
    write_labeled(source, out, columns, report, extra_dirs={})
    return out


def awr_sampling_weights(iql_advantages: np.ndarray, temperature: float, max_weight: float) -> np.ndarray:
    return awr_weights(iql_advantages, temperature, max_weight).astype(np.float64)


def recap_weights(source: Source, positive: np.ndarray, positive_share: float | None) -> np.ndarray:
    """Positive frames get `positive_share` of the samples; None: the trainer's data-type weights."""
    if positive_share is None:
        return frame_weights(source.frame_data_type_ids(), DataTypeWeights())
    return indicator_balanced_weights(positive, positive_share)


def method_data(
    method: str,
    source: Source,
    labeled_root: Path,
    iql_advantages: np.ndarray | None,
    positive: np.ndarray | None,
    recap_positive_share: float | None,
) -> MethodData:
    """The dataset and weights of one trained method, on the same frames for every method
    (`positive`: the indicator of the conditioned methods' labeled copy)."""
    if method in CONDITIONED:
        if positive is None:
            raise ValueError(f"{method}: needs the indicator of its labeled copy")
        return MethodData(labeled_root, recap_weights(source, positive, recap_positive_share))
    if method == "awr":
        if iql_advantages is None:
            raise ValueError("awr: needs the IQL advantages")
        return MethodData(source.root, awr_sampling_weights(iql_advantages, 0.5, 100.0))
    weights = {"sft_all": sft_weights, "filtered_sft": filtered_weights, "good_only": good_only_weights}
    if method not in weights:
        raise ValueError(f"method: {method!r} is not trained (one of {TRAINED})")
    chosen = weights[method](source)
    if not chosen.any():
        raise ValueError(f"{method}: no frame qualifies in {source.root}")
    return MethodData(source.root, chosen)
