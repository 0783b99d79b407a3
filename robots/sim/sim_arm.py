"""The simulated arm: MetaWorld behind LeRobot's `Robot` interface.

Besides the Robot methods, it offers what only a simulation can: `reset_episode(seed)` to set up a
new scene and `task_success()` to read the ground-truth outcome. The rollout daemon uses these when
present; real arms have neither.

When scenes change (docs/sim.md): whoever calls `reset_episode` decides (the rollout daemon,
lerobot-eval's env, tests); under stock lerobot-record / lerobot-replay, the episodes they announce
do (robots/sim/stock.py); left to itself (stock lerobot-teleoperate), the sim moves on to the next
seed's scene every `scene_steps` steps, where MetaWorld would end its episode.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from lerobot.robots.robot import Robot

from robots.sim import fast_metaworld
from robots.sim.config_sim import SimArmConfig
from robots.sim.stock import StockEpisodeListener, listen
from robots.sim.tasks import ACTION_NAMES, STATE_NAMES, get_task

log = logging.getLogger(__name__)

# Live connected sims of this process by id, so an in-process simulated operator (stock
# lerobot-teleoperate / lerobot-record) can watch the scene it is teleoperating.
LOCAL_SIMS: weakref.WeakValueDictionary[str, SimArm] = weakref.WeakValueDictionary()
# Tells the connected sims where stock lerobot-record / lerobot-replay episodes begin.
STOCK_EPISODES = StockEpisodeListener(lambda: LOCAL_SIMS.values())
# MetaWorld's own step budget, lifted: it raises once a scene has run 500 steps, but a recorded or
# replayed episode may run longer, and when a scene ends is decided here (see the module docstring).
_UNLIMITED = 2**62
CAMERA = "front"


@dataclass(frozen=True)
class SimCamera:
    """The sim's rendered `front` view, listed in `SimArm.cameras` as a real arm lists its cameras
    (stock lerobot-record sizes its image writer by `len(robot.cameras)`)."""

    arm: SimArm

    def read(self) -> np.ndarray:
        return self.arm.get_observation()[CAMERA]

    def async_read(self) -> np.ndarray:
        return self.read()


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
        self._scene = 0
        # True once a caller sets up the episodes (see the module docstring): no more scene changes
        # after `scene_steps`.
        self._episodes_set_by_caller = False
        self.steps = 0
        # What robots/sim/fast_metaworld.py replaced in the connected env (empty: MetaWorld's own code).
        self.fast_patches: list[str] = []

    def __str__(self) -> str:
        # LeRobot's own would say "None SimArm" for an arm without an id.
        return f"{self.id or self.name} {type(self).__name__}"

    @property
    def cameras(self) -> dict[str, SimCamera]:
        # Built on each call, so no reference cycle keeps a dropped sim alive in LOCAL_SIMS.
        return {CAMERA: SimCamera(self)} if self.config.camera else {}

    @property
    def observation_features(self) -> dict[str, Any]:
        features: dict[str, Any] = {name: float for name in STATE_NAMES}
        if self.config.camera:
            features[CAMERA] = (self.config.camera_height, self.config.camera_width, 3)
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
        self._env.unwrapped.max_path_length = _UNLIMITED
        # Bit-identical, faster replacements for MetaWorld's Python hot spots, on this env only
        # (robots/sim/fast_metaworld.py: over half of a push-v3 step was its contact loop).
        self.fast_patches = fast_metaworld.patch(self._env.unwrapped)
        self._episodes_set_by_caller = False
        self._start_scene(self.config.seed + self.config.episode)
        LOCAL_SIMS[self.id or "sim"] = self
        listen(STOCK_EPISODES)
        log.info(
            "%s connected: %s, seed %d, scene seed %d",
            self,
            self.task.name,
            self.config.seed,
            self._episode_seed,
        )

    def reset_episode(self, seed: int | None = None) -> None:
        """Set up a new scene. Without a seed, the next one after the previous episode's.

        From now on the caller decides when scenes change (no more changes after `scene_steps`)."""
        self._episodes_set_by_caller = True
        self._start_scene(self._episode_seed + 1 if seed is None else seed)

    def follow_stock_episode(self, index: int | None) -> None:
        """A stock tool announced an episode (robots/sim/stock.py): lerobot-record's episode `index`
        is recorded in scene `seed + index`; a replay (None) keeps the scene set up at connect,
        `seed + episode`. Either way the scene now lasts as long as the tool's episode does."""
        self._episodes_set_by_caller = True
        if index is not None:
            self._start_scene(self.config.seed + index)
            log.info("%s: recording episode %d in scene seed %d", self, index, self._episode_seed)

    def _start_scene(self, seed: int) -> None:
        self._episode_seed = seed
        # MT1 picks the scene from the env's own generator before reset(seed=...) reseeds it, so
        # reseed that first: the same seed must give the same scene (evaluation seeds, lockstep runs).
        self._env.unwrapped.np_random, _ = seeding.np_random(seed)
        state, _ = self._env.reset(seed=seed)
        self._set_state(state, success=False)
        self.steps = 0
        self._scene += 1

    @property
    def episode_seed(self) -> int:
        return self._episode_seed

    @property
    def base_seed(self) -> int:
        """The configured seed: a caller numbering its episodes runs episode `n` in scene
        `base_seed + n`."""
        return self.config.seed

    @property
    def task_name(self) -> str:
        """The configured task's name (e.g. push-v3)."""
        return self.config.task

    @property
    def scene(self) -> int:
        """How many scenes were set up since this object was made: changes with every new scene,
        even one with the seed of the last (a re-recorded episode)."""
        return self._scene

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
            obs[CAMERA] = self._image
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
        self._move_on_if_left_alone()
        return dict(zip(ACTION_NAMES, vec.tolist(), strict=True))

    def _move_on_if_left_alone(self) -> None:
        # Left to itself (lerobot-teleoperate), the sim ends a scene where MetaWorld would, so the
        # operator always has a task before it; the next get_observation shows the new scene.
        if not self._episodes_set_by_caller and self.steps >= self.config.scene_steps:
            log.info("%s: scene seed %d ran %d steps; next scene", self, self._episode_seed, self.steps)
            self._start_scene(self._episode_seed + 1)

    def _set_state(self, state: np.ndarray, success: bool) -> None:
        self._state = np.asarray(state, dtype=np.float32)
        self._success = success
        if self.config.camera:
            # MetaWorld renders upside down from its corner cameras.
            self._image = np.ascontiguousarray(self._env.render()[::-1])

    def disconnect(self) -> None:
        if self._env is not None:
            log.info(
                "%s disconnected after %d steps of scene seed %d (success %s)",
                self,
                self.steps,
                self._episode_seed,
                self._success,
            )
            self._env.close()
            self._env = None
        LOCAL_SIMS.pop(self.id or "sim", None)
