"""The simulated operator: a `Teleoperator` whose "leader arm" is MetaWorld's scripted expert.

Like a person, it acts on a slightly old view of the scene (reaction delay), is noisy, and, by skill,
hesitant, wandering or occasionally wrong. It sees the scene through `observe()` (fed by the teleop
process from the daemon's observation stream) or, with observation_source=local, straight from a
sim arm in the same process (stock lerobot-teleoperate / lerobot-record).
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any

import numpy as np
from lerobot.teleoperators.teleoperator import Teleoperator

from flywheel.contracts.messages import Observation
from robots.sim.sim_arm import LOCAL_SIMS
from robots.sim.tasks import ACTION_NAMES, STATE_NAMES, get_task
from teleop.sim_operator.config_sim_operator import SimOperatorConfig

# MetaWorld's scripted policies warn on every call that their gains may saturate the [-1, 1] clip.
warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high", category=UserWarning)


class SimOperator(Teleoperator):
    config_class = SimOperatorConfig
    name = "sim_operator"

    def __init__(self, config: SimOperatorConfig):
        super().__init__(config)
        self.config = config
        self._connected = False
        self._rng = np.random.default_rng(config.seed)
        self._seen: deque[np.ndarray] = deque(maxlen=config.reaction_delay_frames + 1)
        self._episode = -1
        self._sim_task = ""
        self._drift = np.zeros(3)
        self._burst_left = 0
        self._burst_action = np.zeros(4)
        self._pause_left = 0

    @property
    def action_features(self) -> dict[str, type]:
        return {name: float for name in ACTION_NAMES}

    @property
    def feedback_features(self) -> dict:
        return {}

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def is_calibrated(self) -> bool:
        return True

    def connect(self, calibrate: bool = True) -> None:
        self._connected = True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        pass

    def disconnect(self) -> None:
        self._connected = False

    def observe(self, view: Observation) -> None:
        """Look at the scene (called once per new observation)."""
        if view.episode != self._episode:
            self._episode = view.episode
            self._seen.clear()
            self._drift[:] = 0.0
            self._burst_left = self._pause_left = 0
        self._sim_task = view.sim_task
        index = {name: i for i, name in enumerate(view.names)}
        self._seen.append(view.state[[index[name] for name in STATE_NAMES]])

    def get_action(self) -> dict[str, float]:
        if self.config.observation_source == "local":
            self._observe_local_sim()
        if not self._seen:
            return dict.fromkeys(ACTION_NAMES, 0.0)  # has not seen the scene yet: keep still
        state = self._seen[0]  # the oldest view kept: `reaction_delay_frames` old
        expert = get_task(self._sim_task, field="observation.sim_task").expert()
        action = np.asarray(expert.get_action(state), dtype=np.float64)
        action = self._apply_skill(action)
        return dict(zip(ACTION_NAMES, np.clip(action, -1.0, 1.0).tolist(), strict=True))

    def _observe_local_sim(self) -> None:
        if not LOCAL_SIMS:
            raise RuntimeError("teleop.observation_source=local: no connected sim arm in this process")
        sim = next(iter(LOCAL_SIMS.values()))
        # The scene counter, not the seed, marks a new episode: a re-recorded stock episode repeats
        # its seed, and the operator must still forget what it saw of the last attempt.
        view = Observation(
            sim.scene, sim.steps, sim.task.instruction, STATE_NAMES, sim.state_vector(), sim.task.name
        )
        self.observe(view)

    def _apply_skill(self, action: np.ndarray) -> np.ndarray:
        skill, sigma, rng = self.config.skill, self.config.noise_std, self._rng
        if skill == "slow":
            if self._pause_left > 0 or rng.random() < 0.03:
                self._pause_left = self._pause_left - 1 if self._pause_left > 0 else int(rng.integers(5, 20))
                return np.array([0.0, 0.0, 0.0, action[3]])
            action[:3] *= 0.35
        elif skill == "drift":
            # Ornstein-Uhlenbeck wander added to the motion: slow, correlated, large.
            self._drift += -0.05 * self._drift + rng.normal(0.0, 0.15, 3)
            action[:3] += self._drift
        elif skill == "burst":
            if self._burst_left == 0 and rng.random() < 0.04:
                self._burst_left = int(rng.integers(8, 20))
                self._burst_action = rng.uniform(-1.0, 1.0, 4)
            if self._burst_left > 0:
                self._burst_left -= 1
                return self._burst_action.copy()
        elif skill == "noisy":
            sigma *= 5.0
        return action + rng.normal(0.0, sigma, 4) * np.array([1.0, 1.0, 1.0, 0.0])
