"""RECAP rewards and returns (π*0.6 paper, NOTES.md section 1).

Reward per step: -1, except 0 at the last step of a successful episode and -C_fail at the last
step of a failed one. Undiscounted. Returns are divided by the task's maximum episode length so
that they lie in (-1, 0] (a failure's return is clipped to -1: the value bins stop there).
"""

from __future__ import annotations

import numpy as np


def episode_rewards(length: int, success: bool, failure_penalty: float) -> np.ndarray:
    """Unnormalized per-step rewards of one episode."""
    rewards = np.full(length, -1.0, dtype=np.float64)
    rewards[-1] = 0.0 if success else -float(failure_penalty)
    return rewards


def reward_to_go(rewards: np.ndarray) -> np.ndarray:
    """Monte-Carlo return G_t = sum_{k>=t} r_k (undiscounted), for every t."""
    return np.cumsum(rewards[::-1])[::-1].copy()


def nstep_reward_sum(rewards: np.ndarray, n: int) -> np.ndarray:
    """sum_{k<n} r_{t+k}, truncated at the episode end."""
    togo = reward_to_go(rewards)
    shifted = np.zeros_like(togo)
    if n < len(togo):
        shifted[: len(togo) - n] = togo[n:]
    return togo - shifted


def normalize(returns: np.ndarray, max_length: float) -> np.ndarray:
    """Scale by the task's maximum episode length and clip into the value support [-1, 0]."""
    return np.clip(returns / float(max_length), -1.0, 0.0)
