"""Mirror mode: a leader arm with torque follows the follower while the policy drives.

A takeover is bumpless only if the leader is where the follower is when the pedal goes down; with
the leader left wherever the operator last put it, the follower has to travel there (the daemon's
step limit turns that jump into a ramp, but the ramp is still a motion nobody commanded). Leaders
whose servos have torque (SO-100 on a Feetech bus, Koch on a Dynamixel bus) can instead be driven
to follow the follower:

- pedal up, a fresh observation: torque on, Goal_Position = the follower's joint positions
  (LeRobot's `<motor>.pos`, matched to the leader's motors by name, both in LeRobot's normalized
  units, so the two calibrations line up as they do for teleoperation itself);
- pedal down: torque off at once, before the operator's action is read and published, so the
  operator never fights the servos; the operator moves the leader;
- pedal up again: torque back on where the leader is (its goal is first set to its present
  position), then it follows again.

Which motors: those whose torque is off once LeRobot has configured the leader. A motor the device
itself holds with torque is the device's own (Koch's gripper is a spring-loaded trigger, in
current-based position mode): the mirror never writes to it nor switches its torque. So an SO-100
leader's gripper is mirrored too, a Koch leader's trigger is not (its takeover jump is left to the
daemon's step limit).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from flywheel.contracts.messages import Observation

log = logging.getLogger(__name__)

# An observation older than this is not followed: the leader would chase where the follower was.
# Three ticks at 30 Hz; the teleop loop normally takes an observation within a millisecond.
FRESH_S = 0.1


class MotorBus(Protocol):
    """What the mirror needs of LeRobot's MotorsBus (FeetechMotorsBus, DynamixelMotorsBus)."""

    motors: dict[str, Any]

    def sync_read(self, data_name: str, motors: Any = None, *, normalize: bool = True) -> dict[str, Any]: ...

    def sync_write(self, data_name: str, values: dict[str, Any], *, normalize: bool = True) -> None: ...

    def enable_torque(self, motors: Any = None) -> None: ...

    def disable_torque(self, motors: Any = None) -> None: ...


def motor_bus_of(teleoperator: Any, device: str) -> MotorBus:
    """The teleoperator's motor bus, or a ValueError saying mirror mode cannot drive this device."""
    bus = getattr(teleoperator, "bus", None)
    needed = ("motors", "sync_read", "sync_write", "enable_torque", "disable_torque")
    if bus is None or not all(hasattr(bus, name) for name in needed):
        raise ValueError(
            f"mirror: true needs a leader arm with a motor bus (so100_leader, koch_leader, ...); "
            f"teleop.type={device!r} has none"
        )
    return bus


class LeaderMirror:
    """Drives the leader's torque and goals from the pedal and the follower's observations.

    `update` is called once per loop of the teleop process, after the pedal is read and before the
    operator's action is read."""

    def __init__(self, teleoperator: Any, device: str, max_step: float | None):
        self.bus = motor_bus_of(teleoperator, device)
        self.max_step = max_step
        self.motors: list[str] = []  # chosen by `start`, once the device is configured
        self.following = False  # torque on, goals written
        self._goal: np.ndarray | None = None  # the last goal written, in `motors` order
        self._names: tuple[str, ...] = ()  # the observation names `_index` was built for
        self._index: list[int] = []

    def start(self) -> None:
        """After the teleoperator connected: mirror every motor LeRobot left without torque."""
        torque = self.bus.sync_read("Torque_Enable", normalize=False)
        self.motors = [motor for motor in self.bus.motors if not torque[motor]]
        held = [motor for motor in self.bus.motors if torque[motor]]
        log.info("mirror: the leader follows the follower on %s (left to the device: %s)", self.motors, held)

    def update(self, pressed: bool, view: Observation | None, age_s: float) -> None:
        """`view`: the observation that arrived since the last call (None if none did)."""
        if pressed:
            self.release()
            return
        if view is None or age_s > FRESH_S or not self.motors:
            return  # nothing new to follow: the leader holds its last goal (torque stays as it was)
        target = self._target(view)
        if not self.following:
            self._engage()
        goal = self._step_toward(target)
        self.bus.sync_write("Goal_Position", dict(zip(self.motors, goal.tolist(), strict=True)))
        self._goal = goal

    def _step_toward(self, target: np.ndarray) -> np.ndarray:
        if self.max_step is None or self._goal is None:
            return target
        return self._goal + np.clip(target - self._goal, -self.max_step, self.max_step)

    def release(self) -> None:
        """Torque off on the mirrored motors: the operator moves the leader freely."""
        if self.following:
            self.bus.disable_torque(self.motors)
            self.following = False

    def stop(self) -> None:
        """An emergency stop: the leader goes limp and is never driven again by this process."""
        self.release()
        if self.motors:
            log.warning("mirror: emergency stop; the leader is limp until the teleop process restarts")
        self.motors = []

    def _engage(self) -> None:
        # Hold where the leader is before torque comes on (a servo may otherwise go to a stale goal).
        present = self.bus.sync_read("Present_Position", self.motors)
        self._goal = np.array([float(present[m]) for m in self.motors])
        self.bus.sync_write("Goal_Position", dict(zip(self.motors, self._goal.tolist(), strict=True)))
        self.bus.enable_torque(self.motors)
        self.following = True

    def _target(self, view: Observation) -> np.ndarray:
        if view.names != self._names:
            missing = [f"{m}.pos" for m in self.motors if f"{m}.pos" not in view.names]
            if missing:
                raise ValueError(
                    f"mirror: the follower's observation has no {missing} (it has {list(view.names)}); "
                    "mirror mode needs a follower whose joints are named as the leader's motors"
                )
            self._names = view.names
            self._index = [view.names.index(f"{m}.pos") for m in self.motors]
        return np.asarray(view.state, dtype=np.float64)[self._index]
