"""The seed's data-type weights as a torch Sampler over frames.

Frame types: 0 demo (operator-only episodes), 1 auto (the policy acted), 2 intervention (the
operator's frames inside a policy episode).
    balance_data_types=False: P(frame) ∝ weight[type]            (a type's share grows with its size)
    balance_data_types=True:  P(frame) ∝ weight[type] / n[type]  (a type's share ∝ its weight only)
Frame types do not reach `policy.forward` under stock lerobot-train, so the weights act here, in
the sampler a trainer passes to its DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler


@dataclass
class DataTypeWeights:
    demo_weight: float = 1.0
    auto_weight: float = 1.0
    intervention_weight: float = 2.0
    balance_data_types: bool = True

    def per_type(self) -> np.ndarray:
        return np.array([self.demo_weight, self.auto_weight, self.intervention_weight], dtype=np.float64)


def frame_weights(frame_types: np.ndarray, weights: DataTypeWeights) -> np.ndarray:
    """Normalized sampling probability per frame."""
    per_frame = weights.per_type()[frame_types]
    if weights.balance_data_types:
        counts = np.bincount(frame_types, minlength=3).astype(np.float64)
        per_frame = per_frame / counts[frame_types]
    return per_frame / per_frame.sum()


def expected_type_shares(frame_types: np.ndarray, weights: DataTypeWeights) -> np.ndarray:
    p = frame_weights(frame_types, weights)
    return np.bincount(frame_types, weights=p, minlength=3)


class DataTypeWeightedSampler(Sampler[int]):
    """Draws `num_samples` frame indices per epoch with replacement, by data-type weight."""

    def __init__(
        self, frame_types: np.ndarray, weights: DataTypeWeights, num_samples: int | None = None, seed: int = 0
    ):
        self.probabilities = torch.from_numpy(frame_weights(np.asarray(frame_types), weights))
        self.num_samples = num_samples or len(frame_types)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        draws = torch.multinomial(self.probabilities, self.num_samples, True, generator=self.generator)
        yield from draws.tolist()

    def __len__(self) -> int:
        return self.num_samples


def sampler_for_dataset(
    root: Path, weights: DataTypeWeights, num_samples: int | None = None, seed: int = 0
) -> DataTypeWeightedSampler:
    """A sampler over a flywheel dataset's frames (indices as in LeRobotDataset, source or labeled)."""
    from flywheel.recap.source import load_source  # reads meta/episodes and the intervention column

    return DataTypeWeightedSampler(load_source(root).frame_data_type_ids(), weights, num_samples, seed)
