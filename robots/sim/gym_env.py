"""The simulated arm as a Gymnasium environment, so stock `lerobot-eval --env.type=flywheel_sim` runs on it.

LeRobot's own `--env.type=metaworld` observes a 4-dim hand state and a 480x480 image; flywheel's
datasets (and so its checkpoints) carry the full 39-dim MetaWorld state, optionally a small `front`
camera. This environment serves exactly what the rollout daemon records, through the same `SimArm`
(same scenes for the same seeds, same action clipping), in the keys LeRobot's eval expects:
`agent_pos` becomes `observation.state`, `pixels/front` becomes `observation.images.front`.

Importing this module registers one Gymnasium id per task, `flywheel_sim/<task>`; LeRobot's
`make_env` imports it through `FlywheelSimEnvConfig.package_name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from robots.sim.config_sim import SimArmConfig
from robots.sim.sim_arm import CAMERA, SimArm
from robots.sim.tasks import ACTION_NAMES, STATE_NAMES, TASKS, get_task

GYM_NAMESPACE = "flywheel_sim"


class FlywheelSimEnv(gym.Env):
    """One MetaWorld task behind `SimArm`; reward 1 on the step the task first succeeds, which ends it."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: str = "push-v3",
        episode_length: int = 200,
        observe_camera: bool = False,
        camera_width: int = 96,
        camera_height: int = 96,
        render_mode: str = "rgb_array",
    ) -> None:
        super().__init__()
        self.render_mode = render_mode
        self.observe_camera = observe_camera
        self._max_episode_steps = episode_length
        self.task = get_task(task, field="env.task").instruction
        self.task_description = self.task
        # The camera always renders: lerobot-eval records a video of every evaluated episode.
        arm_config = SimArmConfig(
            task=task, camera=True, camera_width=camera_width, camera_height=camera_height
        )
        self._arm = SimArm(arm_config)
        self._arm.connect()
        state_space = spaces.Box(-np.inf, np.inf, shape=(len(STATE_NAMES),), dtype=np.float64)
        observation: dict[str, spaces.Space] = {"agent_pos": state_space}
        if observe_camera:
            image = spaces.Box(0, 255, shape=(camera_height, camera_width, 3), dtype=np.uint8)
            observation["pixels"] = spaces.Dict({CAMERA: image})
        self.observation_space = spaces.Dict(observation)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(len(ACTION_NAMES),), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._arm.reset_episode(seed)
        return self._observation(), {"is_success": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self._arm.send_action(dict(zip(ACTION_NAMES, np.asarray(action).tolist(), strict=True)))
        success = self._arm.task_success()
        truncated = self._arm.steps >= self._max_episode_steps
        return self._observation(), float(success), success, truncated, {"is_success": success}

    def render(self) -> np.ndarray:
        return self._arm.get_observation()[CAMERA]

    def close(self) -> None:
        if self._arm.is_connected:
            self._arm.disconnect()

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"agent_pos": self._arm.state_vector().astype(np.float64)}
        if self.observe_camera:
            obs["pixels"] = {CAMERA: self.render()}
        return obs


@EnvConfig.register_subclass(GYM_NAMESPACE)
@dataclass
class FlywheelSimEnvConfig(EnvConfig):
    """`lerobot-eval --env.type=flywheel_sim --env.task=push-v3`: flywheel's sim, as its datasets see it."""

    task: str = "push-v3"
    fps: int = 30
    # Control steps per episode (the `sim` preset records 200: 6.67 s at 30 Hz).
    episode_length: int = 200
    # Observe the `front` camera (only for policies trained with --robot.camera=true).
    camera: bool = False
    camera_width: int = 96
    camera_height: int = 96

    def __post_init__(self) -> None:
        get_task(self.task, field="env.task")
        if self.episode_length < 1:
            raise ValueError(f"env.episode_length: {self.episode_length} must be at least 1")
        self.features = {
            "action": PolicyFeature(type=FeatureType.ACTION, shape=(len(ACTION_NAMES),)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(len(STATE_NAMES),)),
        }
        self.features_map = {"action": ACTION, "agent_pos": OBS_STATE}
        if self.camera:
            shape = (self.camera_height, self.camera_width, 3)
            self.features[f"pixels/{CAMERA}"] = PolicyFeature(type=FeatureType.VISUAL, shape=shape)
            self.features_map[f"pixels/{CAMERA}"] = f"{OBS_IMAGES}.{CAMERA}"

    @property
    def package_name(self) -> str:
        return __name__

    @property
    def gym_id(self) -> str:
        return f"{GYM_NAMESPACE}/{self.task}"

    @property
    def gym_kwargs(self) -> dict[str, Any]:
        return {
            "episode_length": self.episode_length,
            "observe_camera": self.camera,
            "camera_width": self.camera_width,
            "camera_height": self.camera_height,
        }


for _name in TASKS:
    if f"{GYM_NAMESPACE}/{_name}" not in gym.registry:
        gym.register(id=f"{GYM_NAMESPACE}/{_name}", entry_point=FlywheelSimEnv, kwargs={"task": _name})
