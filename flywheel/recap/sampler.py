"""The seed's data-type weights as per-frame sampling weights.

Frame types: 0 demo (operator-only episodes), 1 auto (the policy acted), 2 intervention (the
operator's frames inside a policy episode).
    balance_data_types=False: P(frame) ∝ weight[type]            (a type's share grows with its size)
    balance_data_types=True:  P(frame) ∝ weight[type] / n[type]  (a type's share ∝ its weight only)
Frame types do not reach `policy.forward` under stock lerobot-train, so the weights act in the
sampler: frame_weights -> a .npy -> TrainPolicyConfig.sample_weights, which trainer/train_policy.py
turns into its one sampler (weighted_sampler: torch's WeightedRandomSampler, with replacement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
