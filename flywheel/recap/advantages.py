"""Advantages and their binarization into the RECAP indicator.

Advantage (normalized-return units):
    nstep: A_t = sum_{k<N} r_{t+k} / T_max + V(o_{t+N}) - V(o_t), V(o_{t+N}) = 0 past the end
    mc:    A_t = G_t / T_max - V(o_t)
Threshold per task, over the frames whose label is not forced:
    global:   one percentile, so that `positive_fraction` of them are positive (the paper's)
    progress: the same percentile taken separately within quantile bins of V(o_t), so a frame is
              compared with frames at the same stage of the task (NOTES.md section 5)
Forced positive: the operator's frames inside policy episodes (interventions), and optionally demos.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flywheel.recap.returns import nstep_reward_sum


def nstep_advantages(
    rewards: np.ndarray, values: np.ndarray, episode_slices: list[slice], n: int, max_length: np.ndarray
) -> np.ndarray:
    """`rewards` unnormalized, `values` normalized; `max_length` per episode (its task's T_max)."""
    advantages = np.empty_like(values, dtype=np.float64)
    for rows, t_max in zip(episode_slices, max_length, strict=True):
        r, v = rewards[rows], values[rows].astype(np.float64)
        bootstrap = np.zeros_like(v)
        bootstrap[: max(len(v) - n, 0)] = v[n:]
        advantages[rows] = nstep_reward_sum(r, n) / t_max + bootstrap - v
    return advantages


def mc_advantages(normalized_returns: np.ndarray, values: np.ndarray) -> np.ndarray:
    return normalized_returns.astype(np.float64) - values.astype(np.float64)


@dataclass
class Thresholds:
    """Per task: the global threshold, or the V-bin edges and one threshold per bin."""

    mode: str
    positive_fraction: float
    per_task: dict[str, dict] = field(default_factory=dict)


def _upper_quantile(x: np.ndarray, fraction: float) -> float:
    return float(np.quantile(x, 1.0 - fraction)) if len(x) else np.inf


def global_labels(advantages: np.ndarray, candidates: np.ndarray, fraction: float) -> tuple[np.ndarray, dict]:
    threshold = _upper_quantile(advantages[candidates], fraction)
    return advantages > threshold, {"threshold": threshold}


def progress_labels(
    advantages: np.ndarray, values: np.ndarray, candidates: np.ndarray, fraction: float, bins: int
) -> tuple[np.ndarray, dict]:
    """Percentile within quantile bins of V, edges from the candidate frames."""
    inner_edges = (
        np.quantile(values[candidates], np.linspace(0, 1, bins + 1)[1:-1]) if candidates.any() else []
    )
    bin_of = np.searchsorted(np.asarray(inner_edges), values, side="right")
    positive = np.zeros(len(advantages), dtype=bool)
    thresholds = []
    for b in range(bins):
        in_bin = bin_of == b
        threshold = _upper_quantile(advantages[in_bin & candidates], fraction)
        thresholds.append(threshold)
        positive |= in_bin & (advantages > threshold)
    return positive, {"value_bin_edges": [float(e) for e in inner_edges], "thresholds": thresholds}


def label(
    advantages: np.ndarray,
    values: np.ndarray,
    tasks: np.ndarray,
    forced: np.ndarray,
    mode: str,
    fraction: float,
    bins: int = 8,
) -> tuple[np.ndarray, Thresholds]:
    """Binary indicator per frame; thresholds fitted per task on the non-forced frames."""
    if mode not in ("global", "progress"):
        raise ValueError(f"threshold.mode: {mode!r} is not global or progress")
    positive = forced.copy()
    result = Thresholds(mode=mode, positive_fraction=fraction)
    for task in sorted(set(tasks.tolist())):
        in_task = tasks == task
        candidates = in_task & ~forced
        if mode == "global":
            task_positive, info = global_labels(advantages, candidates, fraction)
        else:
            task_positive, info = progress_labels(advantages, values, candidates, fraction, bins)
        positive |= in_task & task_positive
        result.per_task[task] = info
    return positive, result
