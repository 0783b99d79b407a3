from __future__ import annotations

from dataclasses import dataclass

from lerobot.robots.config import RobotConfig

from robots.sim.tasks import get_task


@RobotConfig.register_subclass("sim")
@dataclass(kw_only=True)
class SimArmConfig(RobotConfig):
    """A simulated arm: a MetaWorld MT1 task behind LeRobot's Robot interface."""

    # MetaWorld task: reach-v3, push-v3 or pick-place-v3.
    task: str = "push-v3"
    # Seed of the first episode's scene; episode i uses seed + i unless the caller resets with a seed.
    seed: int = 0
    # Render a low-resolution camera image `front` into each observation (software EGL: slow).
    camera: bool = False
    # Camera image width in pixels.
    camera_width: int = 96
    # Camera image height in pixels.
    camera_height: int = 96
    # MetaWorld camera to render from.
    camera_name: str = "corner2"

    def __post_init__(self):
        super().__post_init__()
        get_task(self.task, field="robot.task")
        for name in ("camera_width", "camera_height"):
            if not 16 <= getattr(self, name) <= 480:
                raise ValueError(f"robot.{name}: {getattr(self, name)} is outside 16..480")
