"""`flywheel run --robot so100` and `--robot koch` against emulated follower and leader buses: LeRobot's
own SO-100 (feetech-servo-sdk) and Koch (dynamixel-sdk) follower and leader classes, a scripted
pedal, one recorded episode with a bumpless takeover."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import episode_table
from robots.emulators.base import relaxed_sdk_timeouts_env
from robots.emulators.dynamixel import emulated_koch
from robots.emulators.feetech import emulated_so100
from tests.netutil import free_address

LEADER_OFFSET_RAW = 230  # about 20 degrees away from the follower on every joint


ARMS = {
    "so100": (lambda d, arm_id: emulated_so100(d, arm_id=arm_id),
              lambda d, arm_id: emulated_so100(d, arm_id=arm_id)),
    "koch": (lambda d, arm_id: emulated_koch(d, arm_id=arm_id),
             lambda d, arm_id: emulated_koch(d, arm_id=arm_id, leader=True)),
}  # fmt: skip


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_run_on_emulated_buses_records_a_bumpless_takeover(tmp_path, arm):
    calibration = tmp_path / "calibration"
    follower_bus, leader_bus = ARMS[arm]
    with (
        follower_bus(calibration, "follower") as (follower_port, follower),
        leader_bus(calibration, "leader") as (leader_port, leader),
    ):
        start = {i: follower.position(i) for i in range(1, 6)}
        for i in range(1, 6):  # the operator holds the leader somewhere else than the follower
            leader.set_position(i, start[i] + LEADER_OFFSET_RAW)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flywheel.cli",
                "run",
                "--robot",
                arm,
                f"--robot.port={follower_port}",
                f"--robot.calibration_dir={calibration}",
                f"--teleop.port={leader_port}",
                f"--teleop.calibration_dir={calibration}",
                "--pedal.type=schedule",
                "--pedal.down=[[10,40]]",
                "--episodes=1",
                "--episode_time_s=2",
                "--reset_time_s=0",
                "--policy.baseline=hold",
                f"--dataset.root={tmp_path / 'ds'}",
                f"--run_dir={tmp_path / 'run'}",
                f"--wire.daemon_events={free_address()}",
                f"--wire.teleop_state={free_address()}",
                f"--wire.deploy={free_address()}",
            ],
            env=relaxed_sdk_timeouts_env(tmp_path / "site"),
            capture_output=True,
            text=True,
            timeout=240,
        )
        moved = {i: follower.position(i) - start[i] for i in range(1, 6)}
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    dataset = LeRobotDataset(f"local/{arm}", root=tmp_path / "ds")
    table = episode_table(dataset)
    assert len(table) == 1 and table.loc[0, "data_type"] == "intervention"
    frames = dataset.hf_dataset.with_format("numpy")[:]
    flags = frames["intervention"].reshape(-1)
    down = np.flatnonzero(flags)
    # The teleop process reads the pedal on its own clock: the takeover starts on frame 10 or a
    # tick later, and is one contiguous span of about 30 frames.
    assert 10 <= down[0] <= 12 and np.all(np.diff(down) == 1) and 27 <= len(down) <= 33
    actions = frames["action"]
    assert np.abs(np.diff(actions, axis=0)).max() <= 5.0 + 1e-4  # the preset's step limit: no jump
    assert all(delta > 50 for delta in moved.values()), moved  # the follower went toward the leader
