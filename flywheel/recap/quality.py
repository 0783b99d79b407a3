"""Label quality against ground truth, where the dataset reveals it.

The simulated operators record their skill in the episode's `operator` column
("sim_operator:good", ":slow", ":drift", ":burst", ":noisy"). A frame the operator drove in a
demo episode is truly good when the skill is `good` and truly bad otherwise. Forced-positive
frames (interventions) are left out: their label says nothing about the advantage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GOOD_SKILLS = {"good"}
BAD_SKILLS = {"slow", "drift", "burst", "noisy"}


def skill_of(operator: str) -> str | None:
    return operator.rsplit(":", 1)[1] if ":" in operator else None


def frame_truth(operators: list[str], data_types: list[str], frame_episode: np.ndarray) -> np.ndarray:
    """Per frame: 1 truly good, 0 truly bad, -1 unknown (policy frames, unknown operators)."""
    per_episode = np.full(len(operators), -1, dtype=np.int64)
    for e, (operator, data_type) in enumerate(zip(operators, data_types, strict=True)):
        skill = skill_of(operator)
        if data_type == "demo" and skill in GOOD_SKILLS:
            per_episode[e] = 1
        elif data_type == "demo" and skill in BAD_SKILLS:
            per_episode[e] = 0
    return per_episode[frame_episode]


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """P(score of a random good frame > score of a random bad frame), ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    n_good, n_bad = int(truth.sum()), int((1 - truth).sum())
    if n_good == 0 or n_bad == 0:
        return float("nan")
    return float((ranks[truth == 1].sum() - n_good * (n_good + 1) / 2.0) / (n_good * n_bad))


@dataclass
class Quality:
    good_frames: int
    bad_frames: int
    good_positive: float  # share of truly good frames labeled positive
    bad_positive: float
    auc: float  # of the continuous advantage, good vs bad

    def as_dict(self) -> dict:
        return dict(vars(self))


def label_quality(
    truth: np.ndarray, advantages: np.ndarray, positive: np.ndarray, forced: np.ndarray
) -> Quality | None:
    known = (truth >= 0) & ~forced
    good, bad = known & (truth == 1), known & (truth == 0)
    if not good.any() or not bad.any():
        return None
    return Quality(
        good_frames=int(good.sum()),
        bad_frames=int(bad.sum()),
        good_positive=float(positive[good].mean()),
        bad_positive=float(positive[bad].mean()),
        auc=roc_auc(advantages[known], truth[known]),
    )
