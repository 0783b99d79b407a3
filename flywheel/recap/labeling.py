"""`flywheel label`: value function -> advantages -> binary RECAP indicator, into a NEW dataset.

    flywheel label --dataset.root=IN --output.root=OUT [--advantage.mode=nstep|mc]
        [--advantage.estimator=recap|iql] [--threshold.mode=global|progress]
        [--threshold.positive_fraction=F] [--value.cross_fit_folds=K] [--conditioning.policy=DIR]

The source dataset is only read. See docs/recap.md.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flywheel.contracts.dataset import FrameType, labels_path
from flywheel.contracts.files import write_text_atomically
from flywheel.policies.recap_value import RecapValueConfig
from flywheel.recap import advantages as adv
from flywheel.recap import iql
from flywheel.recap.iql import IQLSettings
from flywheel.recap.quality import frame_truth, label_quality
from flywheel.recap.returns import episode_rewards, normalize, reward_to_go
from flywheel.recap.source import Source, StockFields, load_source
from flywheel.recap.train_value import (
    FitSettings,
    cross_fit_values,
    load_value_model,
    predict,
    save_value_model,
)
from flywheel.recap.writer import check_output_root, label_columns, write_labeled

log = logging.getLogger(__name__)

# Measured on a mixed-quality sim dataset (docs/recap.md, "Label quality").
DEFAULT_FRACTION = {"global": 0.30, "progress": 0.10}
VALUE_DIR = "meta/recap_value"


@dataclass
class LabelDatasetConfig:
    # The dataset to label (read only).
    root: Path = Path("outputs/datasets/flywheel")
    # Who drove every frame of a dataset without the per-frame `intervention` feature (stock LeRobot
    # tools, docs/dataset.md): operator (lerobot-record: demo episodes) | policy (lerobot-rollout's
    # sentry/highlight/episodic strategies: auto episodes). Unused when the dataset has the feature.
    driver: str = "operator"


@dataclass
class LabelOutputConfig:
    # Where the labeled copy is written. Must not exist or be empty (unless overwrite).
    root: Path = Path("outputs/datasets/flywheel_labeled")
    overwrite: bool = False


@dataclass
class RewardConfig:
    # -C_fail at a failed episode's last step, as a fraction of the task's maximum episode length.
    failure_penalty: float = 0.5
    # T_max used to normalize returns; default: the longest episode of the task in the dataset.
    max_episode_length: int | None = None
    # Only for a dataset without meta/episodes.success (stock LeRobot tools record no outcome;
    # docs/dataset.md): the episode indices that succeeded, the others failed ...
    success_episodes: list[int] | None = None
    # ... or: every episode succeeded.
    assume_success: bool = False


@dataclass
class ValueTrainConfig:
    # A trained recap_value directory (meta/recap_value of an earlier labeling): skip training.
    path: Path | None = None
    preset: str = "tiny"  # tiny | vlm
    # Feed the cameras (parquet-stored images) to V besides the state. Slower: a CNN per camera.
    use_images: bool = False
    steps: int = 800  # per model
    batch_size: int = 256
    lr: float = 1e-3
    # K > 1: train K models on folds of episodes; each episode is valued by the one that did not
    # see it. A V fitted on an episode's own return leaves advantages of ~0 + noise: measured label
    # AUC 0.77 without, 0.89 with 3 folds (docs/recap.md).
    cross_fit_folds: int = 3
    infer_batch_size: int = 2048
    seed: int = 0
    # torch CPU threads. 1 by default: the small networks gain nothing from more, and on a busy
    # 2-core machine multi-threaded torch stalls for seconds (measured: 300 IQL steps 13.7 s -> 2.6 s).
    torch_threads: int = 1
    # Local weights for the vlm preset (random init without them).
    vlm_vision_path: str | None = None
    vlm_language_path: str | None = None


@dataclass
class AdvantageConfig:
    estimator: str = "recap"  # recap (distributional V, the paper) | iql (the seed's)
    mode: str = "nstep"  # nstep | mc (recap only)
    n_step: int = 50


@dataclass
class ThresholdConfig:
    mode: str = "progress"  # global (one percentile per task) | progress (per V-quantile bin)
    # Share of non-forced frames labeled positive per task; default 0.30 global, 0.10 progress.
    positive_fraction: float | None = None
    progress_bins: int = 8
    # Label every demo frame positive (the paper's SFT data) instead of thresholding demos.
    demos_positive: bool = False

    def fraction(self) -> float:
        return self.positive_fraction if self.positive_fraction is not None else DEFAULT_FRACTION[self.mode]


@dataclass
class ConditioningReportConfig:
    # A pi_star_recap pretrained_model folder (the policy deployed now, or one trained on earlier
    # labels). After labeling: how much it uses its advantage indicator on the NEW labels (flow loss
    # with each frame's indicator flipped minus with its own, paired noise), in the report.
    # None: not measured, no cost.
    policy: Path | None = None
    # Frames measured, from all episodes: at most this many, half positive and half negative where
    # the labels allow, picked with value.seed (deterministic).
    frames: int = 128
    # Noise / flow-time draws per frame, shared by the true and the flipped indicator.
    draws: int = 2
    # Also sample action chunks under positive and negative (the action difference): slower.
    sample_actions: bool = False


@dataclass
class LabelConfig:
    """`flywheel label`: train (or load) a value function and label every frame with an advantage."""

    dataset: LabelDatasetConfig = field(default_factory=LabelDatasetConfig)
    output: LabelOutputConfig = field(default_factory=LabelOutputConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    value: ValueTrainConfig = field(default_factory=ValueTrainConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    # The seed's estimator (--advantage.estimator=iql); its seed follows value.seed.
    iql: IQLSettings = field(default_factory=IQLSettings)
    # Optional: measure a policy's conditioning strength on the new labels (--conditioning.policy).
    conditioning: ConditioningReportConfig = field(default_factory=ConditioningReportConfig)

    def stock_fields(self) -> StockFields:
        """What the user said about a stock LeRobot dataset's missing fields (`load_source`)."""
        episodes = self.reward.success_episodes
        return StockFields(
            success_episodes=None if episodes is None else tuple(int(e) for e in episodes),
            assume_success=self.reward.assume_success,
            driver=self.dataset.driver,
        )

    def __post_init__(self) -> None:
        self.stock_fields()  # refuses an unknown dataset.driver, or both success flags
        choices = {
            "advantage.estimator": (self.advantage.estimator, ("recap", "iql")),
            "advantage.mode": (self.advantage.mode, ("nstep", "mc")),
            "threshold.mode": (self.threshold.mode, ("global", "progress")),
            "value.preset": (self.value.preset, ("tiny", "vlm")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {allowed}")
        fraction = self.threshold.positive_fraction
        if fraction is not None and not 0.0 < fraction < 1.0:
            raise ValueError(f"threshold.positive_fraction: {fraction} is not in (0, 1)")
        for name in ("frames", "draws"):
            if getattr(self.conditioning, name) < 1:
                raise ValueError(f"conditioning.{name}: {getattr(self.conditioning, name)} is not >= 1")


@dataclass
class Labels:
    values: np.ndarray
    advantages: np.ndarray
    positive: np.ndarray
    forced: np.ndarray
    report: dict
    summary: pd.DataFrame


def label_main(cfg: LabelConfig) -> int:
    """Entry point of `flywheel label`: 0 on success, 2 when the input cannot be labeled."""
    try:
        run_labeling(cfg)
    except (ValueError, FileExistsError) as e:  # LabelInputError is a ValueError
        log.error("flywheel label: %s (nothing was written)", e)
        return 2
    return 0


def run_labeling(cfg: LabelConfig) -> Labels:
    threads = torch.get_num_threads()
    if cfg.value.torch_threads > 0:
        torch.set_num_threads(cfg.value.torch_threads)
    try:
        return _run_labeling(cfg)
    finally:
        torch.set_num_threads(threads)  # the caller (e.g. the trainer) keeps its own setting


def _run_labeling(cfg: LabelConfig) -> Labels:
    start = time.perf_counter()
    policy_config = check_conditioning_policy(cfg.conditioning.policy)  # before any other work
    # Validates before anything is written.
    source = load_source(cfg.dataset.root, cfg.value.use_images, cfg.stock_fields())
    if policy_config is not None:
        check_policy_features(policy_config, cfg.conditioning.policy, source.info)
    check_output_root(source.root, cfg.output.root, cfg.output.overwrite)
    with tempfile.TemporaryDirectory() as scratch:
        labels, extra_columns, extra_dirs = compute_labels(source, cfg, Path(scratch))
        labels.report["wall_time_s"] = round(time.perf_counter() - start, 2)
        columns = {**label_columns(labels.values, labels.advantages, labels.positive), **extra_columns}
        write_labeled(source, cfg.output.root, columns, labels.report, extra_dirs)
    labels.report["wall_time_s"] = round(time.perf_counter() - start, 2)
    if cfg.conditioning.policy is not None:
        labels.report["conditioning"] = measure_conditioning(cfg)
        _add_to_labels_file(Path(cfg.output.root), "conditioning", labels.report["conditioning"])
    print_summary(labels, cfg)
    return labels


POLICY_FIELD = "conditioning.policy"


def check_conditioning_policy(path: Path | None) -> dict | None:
    """The config.json of `conditioning.policy` (None when unset), or a ValueError naming the field:
    a folder that is not a saved pi_star_recap with an advantage indicator is refused up front, not
    found out after the labeling."""
    if path is None:
        return None
    path = Path(path)
    what = "a pi_star_recap pretrained_model folder"
    if not path.is_dir():
        raise ValueError(f"{POLICY_FIELD}: {path} is not a folder (expected {what})")
    missing = [
        name
        for name in ("config.json", "model.safetensors", "policy_preprocessor.json")
        if not (path / name).is_file()
    ]
    if missing:
        raise ValueError(f"{POLICY_FIELD}: {path} has no {', '.join(missing)} (expected {what})")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{POLICY_FIELD}: {path}/config.json is not readable JSON ({e})") from None
    if config.get("type") != "pi_star_recap":
        raise ValueError(
            f"{POLICY_FIELD}: {path} is a {config.get('type')!r} policy, not pi_star_recap "
            "(the policy conditioned on the advantage indicator)"
        )
    estimator = config.get("advantage_estimator", "recap")
    if estimator != "recap":
        raise ValueError(
            f"{POLICY_FIELD}: {path} has advantage_estimator={estimator!r}: it takes no advantage "
            "indicator to measure (only 'recap' does)"
        )
    return config


def check_policy_features(config: dict, path: Path, info: dict) -> None:
    """The policy's inputs and action must be in the dataset (the same shape for state and action),
    or the measurement after the labeling could not run."""
    features = info.get("features", {})
    wanted = {**config.get("input_features", {}), **config.get("output_features", {})}
    for key, feature in wanted.items():
        if key not in features:
            raise ValueError(f"{POLICY_FIELD}: {path} takes {key!r}, which the dataset does not have")
        if feature.get("type") in ("STATE", "ACTION"):
            have, need = tuple(features[key].get("shape", ())), tuple(feature.get("shape", ()))
            if have != need:
                raise ValueError(
                    f"{POLICY_FIELD}: {path} takes {key!r} of shape {list(need)}, "
                    f"the dataset's is {list(have)}"
                )


def measure_conditioning(cfg: LabelConfig) -> dict:
    """report_conditioning of `conditioning.policy` on the labeled output (all episodes); a failed
    measurement is logged and recorded, the labels stay."""
    from flywheel.policies.pi_star_recap.conditioning import report_conditioning

    c = cfg.conditioning
    start = time.perf_counter()
    strength = report_conditioning(
        c.policy,
        cfg.output.root,
        None,
        max_frames=c.frames,
        draws=c.draws,
        seed=cfg.value.seed,
        sample_actions=c.sample_actions,
    )
    entry: dict = {"policy": str(c.policy), "episodes": "all", "max_frames": c.frames}
    if strength is None:
        entry["error"] = "not measured (the reason is in the log)"
    else:
        entry.update(strength.as_dict())
    entry["wall_time_s"] = round(time.perf_counter() - start, 2)
    return entry


def _add_to_labels_file(root: Path, key: str, value) -> None:
    """Add `key` to OUT/meta/recap_labels.json, replaced atomically (the file marks a labeled output)."""
    path = labels_path(root)
    report = json.loads(path.read_text())
    report[key] = value
    write_text_atomically(path, json.dumps(report, indent=2, default=float))


def conditioning_line(entry: dict) -> str:
    """One line: what the conditioning numbers mean, and them."""
    head = f"conditioning (policy {entry['policy']}):"
    if "error" in entry:
        return f"{head} {entry['error']}"
    return (
        f"{head} loss with flipped indicator minus true, as share of true: "
        f"{100 * entry['relative_gap']:+.1f}% (true {entry['loss_true']:.4f}, flipped "
        f"{entry['loss_flipped']:.4f}; {entry['frames']} frames, {entry['positive_frames']} positive, "
        f"{entry['draws']} draws; 0 would mean the policy ignores its indicator)"
    )


def task_max_lengths(source: Source, override: int | None) -> dict[str, int]:
    lengths: dict[str, int] = {}
    for task, length in zip(source.episodes.task, source.episodes.length, strict=True):
        lengths[task] = max(lengths.get(task, 0), int(length))
    return {task: override or length for task, length in lengths.items()}


def episode_slices(source: Source) -> list[slice]:
    return [
        slice(int(s), int(s + n)) for s, n in zip(source.episodes.start, source.episodes.length, strict=True)
    ]


def rewards_and_returns(source: Source, cfg: RewardConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: raw reward, normalized MC return, and the frame's task T_max."""
    t_max = task_max_lengths(source, cfg.max_episode_length)
    rewards = np.empty(len(source.frames))
    returns = np.empty(len(source.frames))
    frame_t_max = np.empty(len(source.frames))
    for rows, task, success in zip(
        episode_slices(source), source.episodes.task, source.episodes.success, strict=True
    ):
        length = rows.stop - rows.start
        rewards[rows] = episode_rewards(length, bool(success), cfg.failure_penalty * t_max[task])
        returns[rows] = normalize(reward_to_go(rewards[rows]), t_max[task])
        frame_t_max[rows] = t_max[task]
    return rewards, returns, frame_t_max


def forced_positive(source: Source, demos_positive: bool) -> np.ndarray:
    types = source.frame_data_type_ids()
    forced = types == FrameType.INTERVENTION
    return forced | (types == FrameType.DEMO) if demos_positive else forced


def recap_values(
    source: Source, cfg: LabelConfig, targets: np.ndarray, scratch: Path
) -> tuple[np.ndarray, Path, list[float]]:
    """V for every frame (cross-fitted, or from `value.path`), the saved model, its loss curve."""
    settings = FitSettings(
        steps=cfg.value.steps,
        batch_size=cfg.value.batch_size,
        lr=cfg.value.lr,
        seed=cfg.value.seed,
        infer_batch_size=cfg.value.infer_batch_size,
    )
    model_dir = scratch / "recap_value"
    if cfg.value.path is not None:
        fitted = load_value_model(cfg.value.path)
        values = predict(fitted, source, np.arange(len(source.frames)), settings.infer_batch_size)
    else:
        config = RecapValueConfig(preset=cfg.value.preset)
        config.vlm.vision_path = cfg.value.vlm_vision_path
        config.vlm.language_path = cfg.value.vlm_language_path
        values, fitted = cross_fit_values(source, targets, cfg.value.cross_fit_folds, settings, config)
        log.info("value loss %.3f -> %.3f", np.mean(fitted.losses[:20]), np.mean(fitted.losses[-20:]))
    save_value_model(fitted, model_dir)
    return values, model_dir, fitted.losses


def compute_labels(source: Source, cfg: LabelConfig, scratch: Path) -> tuple[Labels, dict, dict]:
    rewards, returns, frame_t_max = rewards_and_returns(source, cfg.reward)
    slices = episode_slices(source)
    extra_columns: dict[str, np.ndarray] = {}
    extra_dirs: dict[str, Path] = {}
    losses: list[float] = []
    if cfg.advantage.estimator == "iql":
        settings = replace(cfg.iql, seed=cfg.value.seed)
        data = iql.make_transitions(source.frames.state, source.frames.action, rewards, slices)
        model, _ = iql.train_iql(data, settings)
        values, advantages = iql.iql_advantages(model, data)
        extra_columns["awr_weight"] = iql.awr_weights(advantages, settings.temperature, settings.max_weight)
    else:
        values, extra_dirs[VALUE_DIR], losses = recap_values(source, cfg, returns, scratch)
        if cfg.advantage.mode == "mc":
            advantages = adv.mc_advantages(returns, values)
        else:
            t_max = np.array([frame_t_max[s.start] for s in slices])
            advantages = adv.nstep_advantages(rewards, values, slices, cfg.advantage.n_step, t_max)
    forced = forced_positive(source, cfg.threshold.demos_positive)
    tasks = source.task_of_frames()
    positive, thresholds = adv.label(
        advantages,
        values,
        tasks,
        forced,
        cfg.threshold.mode,
        cfg.threshold.fraction(),
        cfg.threshold.progress_bins,
    )
    labels = Labels(values, advantages, positive, forced, {}, pd.DataFrame())
    labels.summary = summary_table(source, labels)
    labels.report = build_report(source, cfg, labels, thresholds, returns)
    if losses:  # cross-entropy of the saved model, first and last 20 steps
        labels.report["value_loss"] = [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))]
    return labels, extra_columns, extra_dirs


def summary_table(source: Source, labels: Labels) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "task": source.task_of_frames(),
            "frame_type": [FrameType(t).data_type.value for t in source.frame_data_type_ids()],
            "positive": labels.positive,
            "forced": labels.forced,
            "value": labels.values,
            "advantage": labels.advantages,
        }
    )
    return (
        frame.groupby(["task", "frame_type"])
        .agg(
            frames=("positive", "size"),
            positive=("positive", "mean"),
            forced=("forced", "mean"),
            mean_value=("value", "mean"),
            mean_advantage=("advantage", "mean"),
        )
        .reset_index()
    )


def build_report(
    source: Source, cfg: LabelConfig, labels: Labels, thresholds: adv.Thresholds, returns: np.ndarray
) -> dict:
    truth = frame_truth(source.episodes.operator, source.episodes.data_type, source.frames.episode)
    quality = label_quality(truth, labels.advantages, labels.positive, labels.forced)
    tasks = source.task_of_frames()
    free = ~labels.forced
    return {
        "source": str(source.root),
        "config": _plain(asdict(cfg)),
        "thresholds": asdict(thresholds),
        "positive_fraction_non_forced": {
            t: float(labels.positive[(tasks == t) & free].mean()) if ((tasks == t) & free).any() else None
            for t in sorted(set(tasks.tolist()))
        },
        "forced_positive_frames": int(labels.forced.sum()),
        "value_mae_vs_mc_return": float(np.abs(labels.values - returns).mean())
        if cfg.advantage.estimator == "recap"
        else None,
        "label_quality": quality.as_dict() if quality else None,
        "summary": labels.summary.to_dict(orient="records"),
    }


def _plain(tree: dict) -> dict:
    return {
        k: _plain(v) if isinstance(v, dict) else (str(v) if isinstance(v, Path) else v)
        for k, v in tree.items()
    }


def print_summary(labels: Labels, cfg: LabelConfig) -> None:
    table = labels.summary.copy()
    for column in ("positive", "forced"):
        table[column] = (100 * table[column]).map("{:.1f}%".format)
    print(f"\nlabeled -> {cfg.output.root}  ({labels.report['wall_time_s']} s)")
    print(table.to_string(index=False, float_format="{:.3f}".format))
    quality = labels.report["label_quality"]
    if quality:
        print(
            f"label quality vs operator skill: good frames {100 * quality['good_positive']:.1f}% positive, "
            f"bad frames {100 * quality['bad_positive']:.1f}% positive, AUC {quality['auc']:.3f} "
            f"({quality['good_frames']} good / {quality['bad_frames']} bad frames)"
        )
    if "conditioning" in labels.report:
        print(conditioning_line(labels.report["conditioning"]))


def main(argv: list[str] | None = None) -> int:
    """`python -m flywheel.recap.labeling --dataset.root=IN --output.root=OUT ...` (what
    `flywheel label` runs)."""
    import draccus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return label_main(draccus.parse(LabelConfig, args=argv))


if __name__ == "__main__":
    raise SystemExit(main())
