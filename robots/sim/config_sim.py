from __future__ import annotations

from dataclasses import dataclass

from lerobot.robots.config import RobotConfig

from robots.sim.tasks import get_task


@RobotConfig.register_subclass("sim")
@dataclass(kw_only=True)
class SimArmConfig(RobotConfig):
    """A simulated arm: a MetaWorld MT1 task behind LeRobot's Robot interface (docs/sim.md)."""

    # MetaWorld task: any of the MT50 set, e.g. reach-v3, push-v3, pick-place-v3, drawer-open-v3
    # (robots/sim/tasks.py lists them with their instructions).
    task: str = "push-v3"
    # Seed of the first episode's scene; episode i uses seed + i unless the caller resets with a seed
    # (under stock lerobot-record, dataset episode i is recorded in scene seed + i). The seed also
    # draws MetaWorld's set of 50 scenes that the episode seeds pick from, so a scene is (seed, i).
    seed: int = 0
    # The episode whose scene the sim starts in when it connects (scene seed + episode): to replay
    # dataset episode i with stock lerobot-replay, give --robot.episode=i with the recording's seed.
    episode: int = 0
    # Left to itself (stock lerobot-teleoperate: nothing sets up episodes), the sim moves on to the
    # next scene after this many steps, where MetaWorld ends an episode (500). Once a caller sets up
    # episodes (reset_episode, or lerobot-record / lerobot-replay announcing one) scenes change only
    # when it says so, however long they run.
    scene_steps: int = 500
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
        if self.episode < 0:
            raise ValueError(f"robot.episode: {self.episode} must be at least 0")
        if self.scene_steps < 1:
            raise ValueError(f"robot.scene_steps: {self.scene_steps} must be at least 1")
        for name in ("camera_width", "camera_height"):
            if not 16 <= getattr(self, name) <= 480:
                raise ValueError(f"robot.{name}: {getattr(self, name)} is outside 16..480")
