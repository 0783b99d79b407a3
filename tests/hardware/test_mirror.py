"""Mirror mode (`flywheel teleop --mirror=true`) on emulated leader buses: the real teleop process loop
(`run_teleop` in a thread) with LeRobot's SO-100 and Koch leader classes, fed OBSERVATION messages
as the daemon sends them, and a scheduled pedal (down on frames [10, 20) of the episode)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from lerobot.teleoperators.koch_leader import KochLeaderConfig
from lerobot.teleoperators.so_leader import SO100LeaderConfig

from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import Observation, TeleopState
from flywheel.contracts.protocol import LatestValueSubscriber, MessageType, Publisher
from robots.emulators.base import BusEmulator
from robots.emulators.dynamixel import emulated_koch
from robots.emulators.feetech import emulated_so100
from teleop.mirror import FRESH_S, LeaderMirror
from teleop.pedals import ScheduledPedalConfig
from teleop.process import TeleopProcessConfig, run_teleop
from teleop.sim_operator import SimOperatorConfig
from tests.netutil import free_address

MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
NAMES = tuple(f"{m}.pos" for m in MOTORS)
UP, DOWN, UP_AGAIN = 0, 10, 20  # frames: the pedal is down on [10, 20)
MAX_STEP = 5.0  # the mirror's own per-observation limit (degrees on the SO-100 leader)
RAW_PER_DEGREE = 4096 / 360  # STS3215: 4096 steps a turn
WAIT_S = 60.0  # a bound on each wait, so that a broken run fails instead of hanging


class DaemonSide:
    """Plays the rollout daemon: publishes the follower's pose as observations and keeps every
    TELEOP_STATE the teleop process answers with."""

    def __init__(self, wire: WireConfig):
        ctx = zmq.Context.instance()
        self.events = Publisher(ctx, wire.daemon_events)
        self.answers: list[TeleopState] = []
        self._changed = threading.Condition()
        self._sub = LatestValueSubscriber(
            ctx, [wire.teleop_state], [MessageType.TELEOP_STATE], on_message=self._keep, server="teleop"
        ).start()

    def _keep(self, received) -> None:
        with self._changed:
            self.answers.append(TeleopState.from_message(received.message))
            self._changed.notify_all()

    def step(self, frame: int, pose: dict[str, float]) -> TeleopState:
        """Publish observation `frame` with the follower at `pose`; the teleop process's first
        answer to it (republished until heard: the first ones may go before subscriptions join)."""
        state = np.array([pose[n] for n in NAMES], dtype=np.float32)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with self._changed:
                seen = len(self.answers)
            self.events.send(Observation(0, frame, "mirror test", NAMES, state))
            answer = self._answer_since(seen, frame, timeout_s=0.5)
            if answer is not None:
                return answer
        raise TimeoutError(f"no teleop answer to frame {frame} within {WAIT_S} s")

    def _answer_since(self, seen: int, frame: int, timeout_s: float) -> TeleopState | None:
        """The first answer to `frame` among those after the first `seen`, waiting up to `timeout_s`."""

        def first() -> TeleopState | None:
            return next((a for a in self.answers[seen:] if a.frame == frame), None)

        with self._changed:
            self._changed.wait_for(lambda: first() is not None, timeout=timeout_s)
            return first()

    def follow_until(
        self, frame: int, pose: dict[str, float], aligned, tolerance: float = 1.0
    ) -> TeleopState:
        """Observation `frame` at `pose`, again at the control rate, until `aligned(answer)`."""
        deadline = time.monotonic() + WAIT_S
        answer = self.step(frame, pose)
        while not aligned(answer, pose, tolerance) and time.monotonic() < deadline:
            time.sleep(1 / 30)
            answer = self.step(frame, pose)
        return answer

    def close(self) -> None:
        self._sub.stop()
        self.events.close()


def leader_at(answer: TeleopState, pose: dict[str, float], tolerance: float, motors=MOTORS) -> bool:
    action = answer.action_by_name()
    return all(abs(action[f"{m}.pos"] - pose[f"{m}.pos"]) <= tolerance for m in motors)


@contextmanager
def teleop_running(cfg: TeleopProcessConfig) -> Iterator[DaemonSide]:
    daemon = DaemonSide(cfg.wire)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_teleop(cfg, stop)
        except BaseException as e:  # surfaced by the test, not lost in the thread
            errors.append(e)

    thread = threading.Thread(target=run, name="teleop-under-test", daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        stop.set()
        thread.join(timeout=10.0)
        daemon.close()
    assert not thread.is_alive(), "the teleop loop did not stop"
    assert not errors, errors


def config(teleop, mirror: bool) -> TeleopProcessConfig:
    wire = WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address())
    return TeleopProcessConfig(
        teleop=teleop,
        pedal=ScheduledPedalConfig(down=[[DOWN, UP_AGAIN]]),
        wire=wire,
        mirror=mirror,
        mirror_max_step=MAX_STEP,
    )


def raw_goals(bus: BusEmulator, servo_id: int, after: int = 0) -> list[int]:
    return [goal for _, i, goal in bus.goal_history()[after:] if i == servo_id]


POSE_A = dict(zip(NAMES, [20.0, -15.0, 10.0, 25.0, -30.0, 60.0], strict=True))
POSE_C = dict(zip(NAMES, [-10.0, 5.0, -20.0, 0.0, 15.0, 40.0], strict=True))
OPERATOR_OFFSET_RAW = 150  # where the operator puts the leader during the takeover (about 13 degrees)


@pytest.mark.timeout(180)
def test_so100_leader_follows_the_follower_and_goes_limp_on_pedal_down(tmp_path: Path) -> None:
    ids = range(1, 7)
    with emulated_so100(tmp_path, arm_id="leader") as (port, bus):
        leader = SO100LeaderConfig(port=port, id="leader", calibration_dir=tmp_path)
        with teleop_running(config(leader, mirror=True)) as daemon:
            # Pedal up: the leader is driven to the follower's pose, a bounded step per observation.
            answer = daemon.follow_until(UP, POSE_A, leader_at)
            assert not answer.pressed and leader_at(answer, POSE_A, 1.0), answer.action_by_name()
            assert all(bus.torque_on(i) for i in ids)
            for i in ids:
                goals = raw_goals(bus, i)
                assert np.abs(np.diff(goals)).max() <= MAX_STEP * RAW_PER_DEGREE + 1, (i, goals)

            # Pedal down: torque is already off when the first operator action is published.
            answer = daemon.step(DOWN, POSE_A)
            assert answer.pressed
            assert not any(bus.torque_on(i) for i in ids)
            written = len(bus.goal_history())
            moved = {i: bus.position(i) + OPERATOR_OFFSET_RAW for i in ids}
            for i in ids:  # the operator moves the limp leader; nothing pulls it back
                bus.set_position(i, moved[i])
            for _ in range(5):
                answer = daemon.step(DOWN + 1, POSE_A)
            assert answer.pressed and not any(bus.torque_on(i) for i in ids)
            assert len(bus.goal_history()) == written  # not a single goal while the operator drives
            assert all(bus.position(i) == moved[i] for i in ids)

            # Pedal up: torque back on where the operator left the leader, then it follows again.
            answer = daemon.follow_until(UP_AGAIN, POSE_C, leader_at)
            assert not answer.pressed and leader_at(answer, POSE_C, 1.0), answer.action_by_name()
            assert all(bus.torque_on(i) for i in ids)
            for i in ids:
                goals = raw_goals(bus, i, after=written)
                assert abs(goals[0] - moved[i]) <= 1, (i, goals[:3], moved[i])  # no jump on re-engage
        assert not any(bus.torque_on(i) for i in ids)  # limp again once the process ends
        assert not bus.errors


@pytest.mark.timeout(180)
def test_without_mirror_nothing_is_written_to_the_leader(tmp_path: Path) -> None:
    with emulated_so100(tmp_path, arm_id="leader") as (port, bus):
        leader = SO100LeaderConfig(port=port, id="leader", calibration_dir=tmp_path)
        with teleop_running(config(leader, mirror=False)) as daemon:
            for frame in (UP, UP + 1, DOWN, DOWN + 1, UP_AGAIN, UP_AGAIN + 1):
                for _ in range(3):
                    answer = daemon.step(frame, POSE_A)
                assert answer.pressed == (DOWN <= frame < UP_AGAIN)
                assert not any(bus.torque_on(i) for i in range(1, 7))
        assert bus.goal_history() == []
        assert not bus.errors


@pytest.mark.timeout(180)
def test_koch_leader_follows_but_its_gripper_trigger_is_left_alone(tmp_path: Path) -> None:
    joints = MOTORS[:5]
    pose = dict(zip(NAMES, [15.0, -10.0, 20.0, -25.0, 10.0, 0.0], strict=True))
    with emulated_koch(tmp_path, arm_id="leader", leader=True) as (port, bus):
        leader = KochLeaderConfig(port=port, id="leader", calibration_dir=tmp_path)
        with teleop_running(config(leader, mirror=True)) as daemon:

            def aligned(answer: TeleopState, pose: dict[str, float], tolerance: float) -> bool:
                return leader_at(answer, pose, tolerance, joints)

            answer = daemon.follow_until(UP, pose, aligned)
            assert aligned(answer, pose, 1.0), answer.action_by_name()
            assert all(bus.torque_on(i) for i in range(1, 7))
            trigger_goals = raw_goals(bus, 6)  # LeRobot's own open-position goal only
            answer = daemon.step(DOWN, pose)
            assert answer.pressed and not any(bus.torque_on(i) for i in range(1, 6))
            assert bus.torque_on(6)  # the trigger keeps its spring
            daemon.follow_until(UP_AGAIN, pose, aligned)
            assert all(bus.torque_on(i) for i in range(1, 7))
            assert raw_goals(bus, 6) == trigger_goals  # the mirror never wrote to the trigger
        assert not bus.errors


def test_mirror_needs_a_leader_with_a_motor_bus() -> None:
    cfg = TeleopProcessConfig(teleop=SimOperatorConfig(), mirror=True)
    with pytest.raises(ValueError, match=r"mirror: .*'sim_operator'"):
        run_teleop(cfg, threading.Event())


def test_mirror_max_step_must_be_positive() -> None:
    with pytest.raises(ValueError, match="mirror_max_step: 0"):
        TeleopProcessConfig(mirror=True, mirror_max_step=0)


class RecordingBus:
    """A motor bus that keeps what is written to it (no emulator: the mirror's own decisions)."""

    motors = dict.fromkeys(("shoulder_pan", "gripper"))

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sync_read(self, data_name: str, motors=None, *, normalize: bool = True) -> dict:
        return dict.fromkeys(self.motors, 0)

    def sync_write(self, data_name: str, values: dict, *, normalize: bool = True) -> None:
        self.calls.append((data_name, dict(values)))

    def enable_torque(self, motors=None) -> None:
        self.calls.append(("torque", True))

    def disable_torque(self, motors=None) -> None:
        self.calls.append(("torque", False))


def observation(names: tuple[str, ...], values: list[float]) -> Observation:
    return Observation(0, 0, "", names, np.array(values, dtype=np.float32))


def test_mirror_follows_only_fresh_observations_and_names_missing_joints() -> None:
    bus = RecordingBus()
    mirror = LeaderMirror(SimpleNamespace(bus=bus), "so100_leader", max_step=None)
    mirror.start()
    fresh = observation(("gripper.pos", "shoulder_pan.pos"), [40.0, 10.0])
    mirror.update(False, fresh, age_s=FRESH_S * 2)  # too old: the leader would chase the past
    assert bus.calls == []
    mirror.update(False, fresh, age_s=0.0)
    assert bus.calls[-2:] == [("torque", True), ("Goal_Position", {"shoulder_pan": 10.0, "gripper": 40.0})]
    mirror.update(True, None, age_s=0.0)
    assert bus.calls[-1] == ("torque", False)
    with pytest.raises(ValueError, match=r"mirror: .*\['gripper.pos'\]"):
        mirror.update(False, observation(("shoulder_pan.pos",), [0.0]), age_s=0.0)


def test_an_emergency_stop_leaves_the_leader_limp_for_good() -> None:
    bus = RecordingBus()
    mirror = LeaderMirror(SimpleNamespace(bus=bus), "so100_leader", max_step=None)
    mirror.start()
    pose = observation(("shoulder_pan.pos", "gripper.pos"), [10.0, 40.0])
    mirror.update(False, pose, age_s=0.0)
    assert mirror.following
    mirror.stop()
    assert bus.calls[-1] == ("torque", False)
    written = len(bus.calls)
    mirror.update(False, pose, age_s=0.0)  # pedal up, a fresh observation: still nothing
    assert len(bus.calls) == written and not mirror.following
