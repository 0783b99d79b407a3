"""Label a flywheel dataset with RECAP advantages and train `pi_star_recap` on it.

    python examples/train_pi_star_recap.py --dataset.repo_id=your_username/your_dataset \
        --dataset.root=./my_recap_dataset --output_dir=outputs/pi_star_recap --steps=2000

`--dataset.repo_id` alone (the seed's command) reads the local copy LeRobot keeps under
$HF_LEROBOT_HOME/<repo_id>; nothing is downloaded, so without one, say where it is with `--dataset.root`.

1. `flywheel label`: a distributional value function on all episodes, an advantage per frame, the
   binary indicator (interventions always positive), written into a new dataset beside the source.
2. The policy, trained through accelerate on the labeled copy with the data-type weights; the
   result is a LeRobot pretrained_model folder that `flywheel rollout --policy.path=...`,
   `flywheel deploy` and `lerobot-eval` load.
The same training runs under stock `lerobot-train --policy.type=pi_star_recap` on the labeled copy.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import numpy as np
from lerobot.utils.constants import HF_LEROBOT_HOME

from flywheel.recap.iql import IQLSettings
from flywheel.recap.labeling import (
    AdvantageConfig,
    LabelConfig,
    LabelDatasetConfig,
    LabelOutputConfig,
    RewardConfig,
    ThresholdConfig,
    ValueTrainConfig,
    run_labeling,
)
from flywheel.recap.sampler import DataTypeWeights, frame_weights
from flywheel.recap.source import load_source
from trainer.train_policy import TrainPolicyConfig, train_policy

# examples/prepare_recap_dataset.py writes here by default.
DEFAULT_ROOT = Path("outputs/datasets/recap")


@dataclass
class DatasetArgs:
    # A local LeRobotDataset. Default: the local copy of repo_id, else outputs/datasets/recap.
    root: Path | None = None
    # The dataset's name (the seed's flag). Read from `root`, or from $HF_LEROBOT_HOME/<repo_id>.
    repo_id: str | None = None


@dataclass
class LabelArgs:
    """`flywheel label`'s options but its dataset paths, which this example sets. (Nesting LabelConfig
    itself made draccus list a second `--dataset` in --help, for label.dataset.)"""

    reward: RewardConfig = field(default_factory=RewardConfig)
    value: ValueTrainConfig = field(default_factory=ValueTrainConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    iql: IQLSettings = field(default_factory=IQLSettings)


@dataclass
class TrainExampleConfig:
    dataset: DatasetArgs = field(default_factory=DatasetArgs)
    output_dir: Path = Path("outputs/pi_star_recap")
    preset: str = "tiny"
    steps: int = 2000
    batch_size: int = 32
    weights: DataTypeWeights = field(default_factory=DataTypeWeights)
    label: LabelArgs = field(default_factory=LabelArgs)


class UsageError(Exception):
    """Flags that cannot work (e.g. a dataset that is not on this machine): one line, no traceback."""


def dataset_root(args: DatasetArgs) -> Path:
    """Where the flags say the dataset is; a clear error naming the flag when it is not there."""
    if args.root is not None:
        root, flag = args.root, f"dataset.root={str(args.root)!r}"
    elif args.repo_id is not None:
        root, flag = HF_LEROBOT_HOME / args.repo_id, f"dataset.repo_id={args.repo_id!r}"
        if not (root / "meta/info.json").is_file():
            raise UsageError(
                f"{flag}: no --dataset.root and no local copy at {root}, and this example does not "
                "download. Pass --dataset.root=DIR, a local LeRobotDataset "
                "(examples/prepare_recap_dataset.py --output_dir=DIR records one)."
            )
    else:
        root, flag = DEFAULT_ROOT, f"dataset.root={str(DEFAULT_ROOT)!r} (the default)"
    if not (root / "meta/info.json").is_file():
        raise UsageError(
            f"{flag}: no LeRobotDataset there (no meta/info.json). Record one with "
            f"examples/prepare_recap_dataset.py --output_dir={root}"
        )
    return root


def label_config(cfg: TrainExampleConfig, root: Path, labeled: Path) -> LabelConfig:
    args = cfg.label
    try:  # LabelConfig checks its choices (e.g. label.advantage.estimator) as it is made
        return LabelConfig(
            dataset=LabelDatasetConfig(root=root),
            output=LabelOutputConfig(root=labeled),
            reward=args.reward,
            value=args.value,
            advantage=args.advantage,
            threshold=args.threshold,
            iql=args.iql,
        )
    except ValueError as e:
        raise UsageError(f"label.{e}") from e


def main(cfg: TrainExampleConfig) -> Path:
    root = dataset_root(cfg.dataset)
    labeled = cfg.output_dir / "labeled"
    run_labeling(label_config(cfg, root, labeled))
    weights = frame_weights(load_source(labeled).frame_data_type_ids(), cfg.weights)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    np.save(cfg.output_dir / "sample_weights.npy", weights)
    pretrained = train_policy(
        TrainPolicyConfig(
            dataset_root=labeled,
            repo_id=cfg.dataset.repo_id or "local/recap",
            policy_preset=cfg.preset,
            output_dir=cfg.output_dir / "train",
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            sample_weights=cfg.output_dir / "sample_weights.npy",
        )
    )
    print(f"policy: {pretrained}")
    return pretrained


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        main(draccus.parse(TrainExampleConfig))
    except UsageError as e:
        print(f"train_pi_star_recap.py: {e}", file=sys.stderr)
        sys.exit(2)
