"""What the daemon may ask of a robot beyond LeRobot's `Robot`, as structural protocols.

`EpisodicRobot` is a robot that sets up its own episodes and knows when the task is done: the
simulated arm (robots/sim/sim_arm.py). A real arm is not one: between episodes a person resets the
scene (`reset_time_s`), and only the operator says success. `robots` never imports this module (it is
below the rollout layer); SimArm matches the protocol by its shape, and the daemon checks
`isinstance(robot, EpisodicRobot)` once, when it is built.

`MotorBusRobot` is a robot with a motor bus whose torque can be cut (LeRobot's arms): what an
emergency stop does beyond sending nothing more.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EpisodicRobot(Protocol):
    @property
    def base_seed(self) -> int:
        """The configured seed: the daemon's attempt `n` runs in scene `base_seed + n`."""
        ...

    @property
    def task_name(self) -> str:
        """The configured task (e.g. push-v3): the teleop process's simulated operator needs it."""
        ...

    @property
    def episode_seed(self) -> int:
        """The seed of the scene now set up (recorded with the episode)."""
        ...

    def reset_episode(self, seed: int | None = None) -> None: ...

    def task_success(self) -> bool: ...

    def task_description(self) -> str:
        """The language instruction of the task."""
        ...


@runtime_checkable
class MotorBusRobot(Protocol):
    bus: Any  # a lerobot MotorsBus: has disable_torque()
