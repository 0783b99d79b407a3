"""The last stage before `robot.send_action`: limits that hold whoever drives.

- Joint limits: each commanded value is clamped to its configured range.
- Step limit (position-controlled arms, whose action names are observation names): a command
  moves at most `max_step` from the previous command per tick. This makes a takeover bumpless:
  on pedal down the follower travels from its own pose to the leader's over a bounded number of
  ticks (distance / max_step) instead of jumping, and the control loop never blocks for it
  (LeRobot's teleoperation start-up otherwise jumps, or blocks on a ramp).
- Non-finite commands are replaced by the hold action (NaN from a policy never reaches a motor).
Every intervention of the layer is counted, and logged once per episode by the daemon.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SafetyConfig:
    # Largest change of a position command per tick, in the action's units (SO-100/Koch: degrees or
    # LeRobot's normalized range). None: no step limit. Only for position-controlled arms.
    max_step: float | None = None
    # Per-action limits, e.g. {"shoulder_pan.pos": [-90, 90]}. Actions not named are not clamped.
    joint_limits: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self):
        if self.max_step is not None and self.max_step <= 0:
            raise ValueError(f"safety.max_step: {self.max_step} must be > 0")
        for name, bounds in self.joint_limits.items():
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ValueError(f"safety.joint_limits.{name}: {bounds} is not [low, high]")


class SafetyLayer:
    def __init__(self, cfg: SafetyConfig, action_names: list[str], observation_names: list[str]):
        self.cfg = cfg
        self.action_names = action_names
        self.position_controlled = all(name in observation_names for name in action_names)
        self.low = np.array([cfg.joint_limits.get(n, [-np.inf, np.inf])[0] for n in action_names])
        self.high = np.array([cfg.joint_limits.get(n, [-np.inf, np.inf])[1] for n in action_names])
        self._previous: np.ndarray | None = None
        self.events: Counter[str] = Counter()

    def reset(self, observation: dict[str, Any]) -> None:
        """Start from where the arm is (episode start, after a takeover or a hand-back)."""
        if self.position_controlled:
            self._previous = np.array([float(observation[n]) for n in self.action_names])

    def apply(self, action: np.ndarray, hold: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if not np.all(np.isfinite(action)):
            self.events["non_finite_command"] += 1
            action = hold.astype(np.float64)
        clamped = np.clip(action, self.low, self.high)
        if not np.array_equal(clamped, action):
            self.events["joint_limit"] += 1
        if self.position_controlled and self.cfg.max_step is not None and self._previous is not None:
            step = np.clip(clamped - self._previous, -self.cfg.max_step, self.cfg.max_step)
            if not np.allclose(step, clamped - self._previous):
                self.events["step_limit"] += 1
            clamped = self._previous + step
        self._previous = clamped
        return clamped.astype(np.float32)
