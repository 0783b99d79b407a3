"""The simulated arm: MetaWorld behind LeRobot's `Robot` interface.

Besides the Robot methods, it offers what only a simulation can: `reset_episode(seed)` to set up a
new scene and `task_success()` to read the ground-truth outcome. The rollout daemon uses these when
present; real arms have neither.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from lerobot.robots.robot import Robot

from robots.sim.config_sim import SimArmConfig
from robots.sim.tasks import ACTION_NAMES, STATE_NAMES, get_task

log = logging.getLogger(__name__)

# Live connected sims of this process by id, so an in-process simulated operator (stock
# lerobot-teleoperate / lerobot-record) can watch the scene it is teleoperating.
LOCAL_SIMS: weakref.WeakValueDictionary[str, SimArm] = weakref.WeakValueDictionary()


class SimArm(Robot):
    config_class = SimArmConfig
    name = "sim"

    def __init__(self, config: SimArmConfig):
        super().__init__(config)
        self.config = config
        self.task = get_task(config.task)
        self._env = None
        self._state: np.ndarray | None = None
        self._image: np.ndarray | None = None
        self._success = False
        self._episode_seed = config.seed
        self.steps = 0

    @property
    def observation_features(self) -> dict[str, Any]:
        features: dict[str, Any] = {name: float for name in STATE_NAMES}
        if self.config.camera:
            features["front"] = (self.config.camera_height, self.config.camera_width, 3)
        return features

    @property
    def action_features(self) -> dict[str, type]:
        return {name: float for name in ACTION_NAMES}

    @property
    def is_connected(self) -> bool:
        return self._env is not None

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def connect(self, calibrate: bool = True) -> None:
        if self.is_connected:
            raise RuntimeError(f"{self} is already connected")
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers the Meta-World/ environments)

        kwargs: dict[str, Any] = {}
        if self.config.camera:
            os.environ.setdefault("MUJOCO_GL", "egl")
            kwargs = dict(
                render_mode="rgb_array",
                camera_name=self.config.camera_name,
                width=self.config.camera_width,
                height=self.config.camera_height,
            )
        # The passive env checker only warns about MetaWorld's observation bounds, every step.
        self._env = gym.make(
            "Meta-World/MT1",
            env_name=self.task.name,
            seed=self.config.seed,
            disable_env_checker=True,
            **kwargs,
        )
        self.reset_episode(self.config.seed)
        LOCAL_SIMS[self.id or "sim"] = self
        log.info("%s connected: %s, seed %d", self, self.task.name, self.config.seed)

    def reset_episode(self, seed: int | None = None) -> None:
        """Set up a new scene. Without a seed, the next one after the previous episode's."""
        self._episode_seed = self._episode_seed + 1 if seed is None else seed
        # MT1 picks the scene from the env's own generator before reset(seed=...) reseeds it, so
        # reseed that first: the same seed must give the same scene (evaluation seeds, lockstep runs).
        self._env.unwrapped.np_random, _ = seeding.np_random(self._episode_seed)
        state, _ = self._env.reset(seed=self._episode_seed)
        self._set_state(state, success=False)
        self.steps = 0

    @property
    def episode_seed(self) -> int:
        return self._episode_seed

    def task_success(self) -> bool:
        return self._success

    def task_description(self) -> str:
        return self.task.instruction

    def state_vector(self) -> np.ndarray:
        """The current 39-dim MetaWorld state (a copy)."""
        return self._state.copy()

    def get_observation(self) -> dict[str, Any]:
        if not self.is_connected:
            raise RuntimeError(f"{self} is not connected")
        obs: dict[str, Any] = dict(zip(STATE_NAMES, self._state.tolist(), strict=True))
        if self.config.camera:
            obs["front"] = self._image
        return obs

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        if not self.is_connected:
            raise RuntimeError(f"{self} is not connected")
        try:
            vec = np.array([float(action[name]) for name in ACTION_NAMES], dtype=np.float32)
        except KeyError as e:
            raise ValueError(f"action: missing {e.args[0]!r}; the sim expects {list(ACTION_NAMES)}") from None
        if not np.all(np.isfinite(vec)):
            raise ValueError(f"action: non-finite values {vec.tolist()}")
        vec = np.clip(vec, -1.0, 1.0)
        state, _reward, _terminated, _truncated, info = self._env.step(vec)
        self.steps += 1
        self._set_state(state, success=self._success or bool(info["success"]))
        return dict(zip(ACTION_NAMES, vec.tolist(), strict=True))

    def _set_state(self, state: np.ndarray, success: bool) -> None:
        self._state = np.asarray(state, dtype=np.float32)
        self._success = success
        if self.config.camera:
            # MetaWorld renders upside down from its corner cameras.
            self._image = np.ascontiguousarray(self._env.render()[::-1])

    def disconnect(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
        LOCAL_SIMS.pop(self.id or "sim", None)
