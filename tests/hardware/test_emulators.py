"""LeRobot's own SO-100 and Koch classes against the servo-bus emulators, through the vendors' SDKs.

Everything here runs without hardware: the emulators answer on pseudo-terminals. What these tests
cannot tell is whether real servos behave like the emulators; docs/hardware.md says what is
checked on emulators only.
"""

from __future__ import annotations

import builtins
import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from robots.emulators import dynamixel as dxl_emu
from robots.emulators import feetech as ft_emu
from robots.emulators.base import BusEmulator

pytestmark = pytest.mark.timeout(20)

MAX_RES = 4095  # LeRobot's DEGREES normalization: (raw - mid) * 360 / (resolution - 1)


@pytest.fixture(autouse=True)
def no_interactive_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibration prompt would hang a test: make it fail instead."""

    def refuse(prompt: str = "") -> str:
        raise AssertionError(f"LeRobot asked interactively: {prompt!r}")

    monkeypatch.setattr(builtins, "input", refuse)


def wait_until(condition: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def degrees_to_raw(degrees: float, low: int, high: int) -> int:
    return int(degrees * MAX_RES / 360 + (low + high) / 2)


@pytest.fixture
def so100_follower(tmp_path: Path) -> Iterator[tuple[object, BusEmulator]]:
    from lerobot.robots.so_follower import SO100Follower, SO100FollowerConfig

    with ft_emu.emulated_so100(tmp_path, arm_id="test_follower") as (port, emulator):
        robot = SO100Follower(SO100FollowerConfig(port=port, id="test_follower", calibration_dir=tmp_path))
        robot.connect()
        yield robot, emulator
        if robot.is_connected:
            robot.disconnect()


# ---- SO-100 (Feetech STS3215) ---------------------------------------------------------------------


def test_so100_follower_connects_calibrated_and_configured(so100_follower) -> None:
    robot, emulator = so100_follower
    assert robot.is_calibrated
    # configure() went through: position mode, LeRobot's PID and gripper protections, torque back on.
    for servo_id in range(1, 7):
        assert emulator.read_register(servo_id, *ft_emu.OPERATING_MODE) == 0
        assert emulator.read_register(servo_id, *ft_emu.P_COEFFICIENT) == 16
        assert emulator.read_register(servo_id, *ft_emu.RETURN_DELAY_TIME) == 0
        assert emulator.torque_on(servo_id)
    assert emulator.read_register(6, *ft_emu.MAX_TORQUE_LIMIT) == 500
    assert emulator.errors == []


def test_so100_follower_reads_positions_and_moves_to_targets(so100_follower) -> None:
    robot, emulator = so100_follower
    observation = robot.get_observation()
    assert set(observation) == {f"{m}.pos" for m in ft_emu.SO100_MOTORS}
    assert observation["shoulder_pan.pos"] == pytest.approx(0.0, abs=0.1)  # the middle of its range
    assert observation["gripper.pos"] == pytest.approx(50.0, abs=0.1)

    sent = robot.send_action({"shoulder_pan.pos": 30.0, "elbow_flex.pos": -20.0, "gripper.pos": 80.0})
    assert sent["shoulder_pan.pos"] == 30.0
    # SYNC_WRITE has no reply: the emulator may see it a moment after send_action returns.
    assert wait_until(lambda: emulator.goal(1) == degrees_to_raw(30.0, 1024, 3072))

    def arrived() -> bool:
        now = robot.get_observation()
        return (
            abs(now["shoulder_pan.pos"] - 30.0) < 0.5
            and abs(now["elbow_flex.pos"] + 20.0) < 0.5
            and abs(now["gripper.pos"] - 80.0) < 0.5
        )

    assert wait_until(arrived), robot.get_observation()
    assert robot.get_observation()["shoulder_lift.pos"] == pytest.approx(0.0, abs=0.1)  # not commanded


def test_so100_joint_speed_is_bounded(tmp_path: Path) -> None:
    from lerobot.robots.so_follower import SO100Follower, SO100FollowerConfig

    speed = 1000.0  # ticks/s: 1024 ticks (90 degrees) take about a second
    with ft_emu.emulated_so100(tmp_path, speed=speed) as (port, emulator):
        robot = SO100Follower(SO100FollowerConfig(port=port, id="test_follower", calibration_dir=tmp_path))
        robot.connect()
        start, t0 = emulator.position(1), time.monotonic()
        robot.send_action({"shoulder_pan.pos": 90.0})
        samples = []
        while time.monotonic() - t0 < 0.3:
            samples.append((time.monotonic(), emulator.position(1)))
            time.sleep(0.02)
        robot.disconnect()
    for (t1, p1), (t2, p2) in itertools.pairwise(samples):
        assert p2 >= p1  # monotonic toward the goal
        assert p2 - p1 <= speed * (t2 - t1 + 0.05) + 2  # never a jump (slack for thread scheduling)
    assert samples[-1][1] - start < 1024  # still on its way after 0.3 s: no teleport


def test_so100_max_relative_target_clips_the_goal(tmp_path: Path) -> None:
    from lerobot.robots.so_follower import SO100Follower, SO100FollowerConfig

    with ft_emu.emulated_so100(tmp_path) as (port, emulator):
        config = SO100FollowerConfig(
            port=port, id="test_follower", calibration_dir=tmp_path, max_relative_target=5.0
        )
        robot = SO100Follower(config)
        robot.connect()
        sent = robot.send_action({"shoulder_pan.pos": 60.0})
        assert sent["shoulder_pan.pos"] == pytest.approx(5.0, abs=0.1)
        assert wait_until(lambda: emulator.goal(1) == degrees_to_raw(5.0, 1024, 3072)), emulator.goal(1)
        robot.disconnect()


def test_so100_disconnect_disables_torque(so100_follower) -> None:
    robot, emulator = so100_follower
    robot.disconnect()
    assert not any(emulator.torque_on(i) for i in range(1, 7))


def test_so100_goal_is_clamped_to_the_position_limits(so100_follower) -> None:
    _, emulator = so100_follower
    emulator.write_register(1, *ft_emu.GOAL_POSITION, 4000)  # beyond Max_Position_Limit (3072)
    assert wait_until(lambda: emulator.position(1) == 3072)
    time.sleep(0.05)
    assert emulator.position(1) == 3072


def test_so100_calibration_mismatch_is_detected(tmp_path: Path) -> None:
    """The registers matter: a servo whose limits differ from the file is seen as uncalibrated."""
    from lerobot.robots.so_follower import SO100Follower, SO100FollowerConfig

    with ft_emu.emulated_so100(tmp_path) as (port, emulator):
        emulator.write_register(3, *ft_emu.MAX_POSITION_LIMIT, 3000)
        robot = SO100Follower(SO100FollowerConfig(port=port, id="test_follower", calibration_dir=tmp_path))
        robot.connect(calibrate=False)
        assert not robot.is_calibrated
        robot.disconnect()


def test_so100_leader_reads_positions_set_in_the_emulator(tmp_path: Path) -> None:
    from lerobot.teleoperators.so_leader import SO100Leader, SO100LeaderConfig

    with ft_emu.emulated_so100(tmp_path, arm_id="test_leader") as (port, emulator):
        leader = SO100Leader(SO100LeaderConfig(port=port, id="test_leader", calibration_dir=tmp_path))
        leader.connect()
        assert leader.is_calibrated
        assert not any(emulator.torque_on(i) for i in range(1, 7))  # a leader is limp
        emulator.set_position(2, degrees_to_raw(-45.0, 1024, 3072))
        emulator.set_position(6, 2750)  # gripper 75 % open
        action = leader.get_action()
        assert action["shoulder_lift.pos"] == pytest.approx(-45.0, abs=0.1)
        assert action["gripper.pos"] == pytest.approx(75.0, abs=0.1)
        assert action["shoulder_pan.pos"] == pytest.approx(0.0, abs=0.1)
        time.sleep(0.05)
        assert leader.get_action()["shoulder_lift.pos"] == pytest.approx(-45.0, abs=0.1)  # stays put
        leader.disconnect()


def test_feetech_broadcast_ping_and_corrupt_packets(tmp_path: Path) -> None:
    from lerobot.motors import Motor, MotorNormMode
    from lerobot.motors.feetech import FeetechMotorsBus

    with ft_emu.FeetechBusEmulator(ids=[1, 2, 3]) as emulator:
        bus = FeetechMotorsBus(emulator.port, {"a": Motor(1, "sts3215", MotorNormMode.RANGE_M100_100)})
        bus.connect()
        assert bus.broadcast_ping() == {1: 777, 2: 777, 3: 777}
        # Noise and a packet with a wrong checksum on the line: ignored, the next packet is answered.
        os.write(bus.port_handler.ser.fileno(), b"\x00\x13\xff\xff\x01\x02\x01\x00")
        assert bus.ping(1) == 777
        bus.disconnect(disable_torque=False)


# ---- Koch (Dynamixel X series, protocol 2.0) -------------------------------------------------------


def test_koch_follower_connects_reads_and_moves(tmp_path: Path) -> None:
    from lerobot.robots.koch_follower import KochFollower, KochFollowerConfig

    with dxl_emu.emulated_koch(tmp_path, arm_id="test_follower") as (port, emulator):
        robot = KochFollower(KochFollowerConfig(port=port, id="test_follower", calibration_dir=tmp_path))
        robot.connect()
        assert robot.is_calibrated
        assert emulator.read_register(1, *dxl_emu.OPERATING_MODE) == 4  # extended position
        assert emulator.read_register(6, *dxl_emu.OPERATING_MODE) == 5  # current-based position
        assert emulator.read_register(3, *dxl_emu.POSITION_P_GAIN) == 1500
        observation = robot.get_observation()
        assert observation["shoulder_lift.pos"] == pytest.approx(0.0, abs=0.1)  # RANGE_M100_100
        robot.send_action({"shoulder_lift.pos": 50.0, "gripper.pos": 20.0})

        def arrived() -> bool:
            now = robot.get_observation()
            return abs(now["shoulder_lift.pos"] - 50.0) < 0.5 and abs(now["gripper.pos"] - 20.0) < 0.5

        assert wait_until(arrived), robot.get_observation()
        robot.disconnect()
        assert not any(emulator.torque_on(i) for i in range(1, 7))
        assert emulator.errors == []


def test_koch_leader_reads_positions_and_holds_its_gripper_trigger(tmp_path: Path) -> None:
    from lerobot.teleoperators.koch_leader import KochLeader, KochLeaderConfig

    with dxl_emu.emulated_koch(tmp_path, arm_id="test_leader", leader=True) as (port, emulator):
        leader = KochLeader(KochLeaderConfig(port=port, id="test_leader", calibration_dir=tmp_path))
        leader.connect()
        assert leader.is_calibrated
        assert emulator.torque_on(6) and not emulator.torque_on(2)  # only the gripper trigger holds
        emulator.set_position(2, 2560)  # 3/4 of 1024..3072
        assert leader.get_action()["shoulder_lift.pos"] == pytest.approx(50.0, abs=0.1)
        leader.disconnect()


def test_dynamixel_refuses_eeprom_writes_with_torque_on_and_stuffs_bytes() -> None:
    import dynamixel_sdk as dxl

    with dxl_emu.DynamixelBusEmulator({1: "xl330-m288"}) as emulator:
        port = dxl.PortHandler(emulator.port)
        packets = dxl.PacketHandler(2.0)
        assert port.openPort()
        assert packets.ping(port, 1)[:2] == (1200, dxl.COMM_SUCCESS)
        # 0x00FDFFFF holds FF FF FD: the SDK stuffs it on the way out, the emulator on the way back.
        comm, error = packets.write4ByteTxRx(port, 1, dxl_emu.GOAL_POSITION[0], 0x00FDFFFF)
        assert (comm, error) == (dxl.COMM_SUCCESS, 0)
        value, comm, error = packets.read4ByteTxRx(port, 1, dxl_emu.GOAL_POSITION[0])
        assert (value, comm, error) == (0x00FDFFFF, dxl.COMM_SUCCESS, 0)
        packets.write1ByteTxRx(port, 1, dxl_emu.TORQUE_ENABLE[0], 1)
        comm, error = packets.write1ByteTxRx(port, 1, dxl_emu.OPERATING_MODE[0], 4)
        assert error == dxl_emu.ERROR_ACCESS
        assert emulator.read_register(1, *dxl_emu.OPERATING_MODE) == 3
        port.closePort()


def test_emulated_bus_from_another_process(tmp_path: Path) -> None:
    """The way an end-to-end run uses it: the arm's process is not the emulator's."""
    import subprocess
    import sys

    # The vendor's SDK alone: importing LeRobot (and torch) in a child takes seconds.
    script = (
        "import sys, scservo_sdk as scs\n"
        "port = scs.PortHandler(sys.argv[1]); port.openPort(); port.setBaudRate(1_000_000)\n"
        "packets = scs.PacketHandler(0)\n"
        "print(packets.ping(port, 3)[0], packets.read2ByteTxRx(port, 3, 56)[0])\n"
    )
    with ft_emu.emulated_so100(tmp_path, arm_id="leader") as (port, emulator):
        emulator.set_position(3, 2222)
        result = subprocess.run(
            [sys.executable, "-c", script, port], capture_output=True, text=True, timeout=15
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["777", "2222"]


def test_emulator_served_by_a_thread(tmp_path: Path) -> None:
    from lerobot.motors import Motor, MotorNormMode
    from lerobot.motors.feetech import FeetechMotorsBus

    with ft_emu.FeetechBusEmulator(ids=[1], process=False) as emulator:
        bus = FeetechMotorsBus(emulator.port, {"a": Motor(1, "sts3215", MotorNormMode.RANGE_M100_100)})
        bus.connect()
        bus.write("Torque_Enable", "a", 1, normalize=False)
        bus.write("Goal_Position", "a", 2100, normalize=False)
        assert wait_until(lambda: bus.read("Present_Position", "a", normalize=False) == 2100)
        bus.disconnect(disable_torque=False)


def test_relaxed_timeouts_reach_a_child_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    from robots.emulators.base import relaxed_sdk_timeouts_env

    env = relaxed_sdk_timeouts_env(tmp_path / "site", reply_ms=400.0)
    script = "import dynamixel_sdk.port_handler as p; print(p.LATENCY_TIMER)"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=15
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "200.0"


def test_goal_history_keeps_every_commanded_goal(so100_follower) -> None:
    """What a step-limit test needs: each goal the bus received, in order, with its time."""
    robot, emulator = so100_follower
    targets = [1.0, 2.0, 3.0, 4.0, 5.0]
    for target in targets:
        robot.send_action({"shoulder_pan.pos": target})
    expected = [degrees_to_raw(t, 1024, 3072) for t in targets]
    assert wait_until(lambda: [g for _, _, g in emulator.goal_history(1)][-5:] == expected)
    times = [t for t, _, _ in emulator.goal_history(1)]
    assert times == sorted(times)
    assert {i for _, i, _ in emulator.goal_history()} == {1}  # only the commanded joint was written
