"""Sampling weights that give RECAP's positive-labeled frames a fixed share of the training samples.

Why (docs/demo.md, issue 19): at equal steps, a conditioned policy learns its "positive" mode only
from the samples that carry the positive indicator. With about 30% of frames positive and 30% of
indicators dropped, about a fifth of RECAP's samples teach the mode it is deployed in; with the
trainer's data-type weights (interventions x2, types balanced) the positives are, besides, about 90%
takeover frames and only a few percent good demonstrations. Measured on a demo run's data (tiny
preset, 1500 steps, ground-truth labels): data-type weights 0.00 / 0.00 success (push / pick-place),
uniform frames 0.30 / 0.10, positives at 70% of the samples with 10% dropout 0.40 / 0.25.

    weights = indicator_balanced_weights(labels_of(labeled_root), positive_share=0.7)
    # -> trainer.train_policy(TrainPolicyConfig(sample_weights=<.npy of weights>, ...))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flywheel.contracts.dataset import ADVANTAGE_POSITIVE, INDEX, data_files, read_frame_table


def indicator_balanced_weights(
    positive: np.ndarray, positive_share: float, base: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame sampling probabilities (summing to 1) in which the positive frames get
    `positive_share` of the mass and the negative ones the rest; within each class the frames keep
    the proportions of `base` (uniform when None). Frames with base weight 0 (held out) stay at 0.
    A class with no frame (or no weight) leaves all the mass to the other."""
    if not 0.0 <= positive_share <= 1.0:
        raise ValueError(f"positive_share: {positive_share} must lie in [0, 1]")
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    base = np.ones(len(positive)) if base is None else np.asarray(base, dtype=np.float64).reshape(-1)
    if base.shape != positive.shape:
        raise ValueError(f"base: {len(base)} weights for {len(positive)} frames")
    if (base < 0).any() or base.sum() <= 0:
        raise ValueError("base: weights must be >= 0 and not all 0")
    mass_pos, mass_neg = base[positive].sum(), base[~positive].sum()
    share = positive_share if mass_pos > 0 and mass_neg > 0 else float(mass_pos > 0)
    out = np.zeros(len(base))
    if mass_pos > 0:
        out[positive] = base[positive] * share / mass_pos
    if mass_neg > 0:
        out[~positive] = base[~positive] * (1.0 - share) / mass_neg
    return out


def labels_of(labeled_root: str | Path) -> np.ndarray:
    """The boolean indicator of every frame of a `flywheel label` output, by the dataset's frame
    index (the order LeRobotDataset and the trainer's sample weights use)."""
    files = data_files(labeled_root)
    if not files:
        raise FileNotFoundError(f"no data/*/*.parquet under {labeled_root}")
    table = read_frame_table(files, [INDEX, ADVANTAGE_POSITIVE])
    index_all = np.asarray(table[INDEX].tolist(), dtype=np.int64)
    labels_all = np.asarray(table[ADVANTAGE_POSITIVE].tolist()).reshape(-1).astype(bool)
    out = np.zeros(int(index_all.max()) + 1, dtype=bool)
    out[index_all] = labels_all
    if len(np.unique(index_all)) != len(out):
        raise ValueError(f"{labeled_root}: frame indices are not 0..N-1")
    return out
