"""Label a flywheel dataset with RECAP advantages and train `pi_star_recap` on it.

    python examples/train_pi_star_recap.py --dataset.root=./my_recap_dataset \
        --output_dir=outputs/pi_star_recap --steps=2000

1. `flywheel label`: a distributional value function on all episodes, an advantage per frame, the
   binary indicator (interventions always positive), written into a new dataset beside the source.
2. The policy, trained through accelerate on the labeled copy with the data-type weights; the
   result is a LeRobot pretrained_model folder that `flywheel rollout --policy.path=...`,
   `flywheel deploy` and `lerobot-eval` load.
The same training runs under stock `lerobot-train --policy.type=pi_star_recap` on the labeled copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import numpy as np

from flywheel.recap.labeling import LabelConfig, run_labeling
from flywheel.recap.sampler import DataTypeWeights, frame_weights
from flywheel.recap.source import load_source
from trainer.train_policy import TrainPolicyConfig, train_policy


@dataclass
class DatasetArgs:
    root: Path = Path("outputs/datasets/recap")


@dataclass
class TrainExampleConfig:
    dataset: DatasetArgs = field(default_factory=DatasetArgs)
    output_dir: Path = Path("outputs/pi_star_recap")
    preset: str = "tiny"
    steps: int = 2000
    batch_size: int = 32
    weights: DataTypeWeights = field(default_factory=DataTypeWeights)
    label: LabelConfig = field(default_factory=LabelConfig)


def main(cfg: TrainExampleConfig) -> Path:
    labeled = cfg.output_dir / "labeled"
    cfg.label.dataset.root, cfg.label.output.root = cfg.dataset.root, labeled
    run_labeling(cfg.label)
    weights = frame_weights(load_source(labeled).frame_data_type_ids(), cfg.weights)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    np.save(cfg.output_dir / "sample_weights.npy", weights)
    pretrained = train_policy(TrainPolicyConfig(
        dataset_root=labeled, policy_preset=cfg.preset, output_dir=cfg.output_dir / "train",
        steps=cfg.steps, batch_size=cfg.batch_size, sample_weights=cfg.output_dir / "sample_weights.npy",
    ))  # fmt: skip
    print(f"policy: {pretrained}")
    return pretrained


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(draccus.parse(TrainExampleConfig))
