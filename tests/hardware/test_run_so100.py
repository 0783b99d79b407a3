"""`flywheel run --robot so100` against emulated follower and leader buses: a real LeRobot SO-100
follower and leader over feetech-servo-sdk, a scripted pedal, one recorded episode with a takeover."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.dataset import episode_table
from robots.emulators.base import relaxed_sdk_timeouts_env
from robots.emulators.feetech import emulated_so100
from tests.netutil import free_address

LEADER_OFFSET_RAW = 230  # about 20 degrees away from the follower on every joint


def test_run_so100_on_emulated_buses_records_a_bumpless_takeover(tmp_path):
    calibration = tmp_path / "calibration"
    with (
        emulated_so100(calibration, arm_id="follower") as (follower_port, follower),
        emulated_so100(calibration, arm_id="leader") as (leader_port, leader),
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
                "so100",
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

    dataset = LeRobotDataset("local/so100", root=tmp_path / "ds")
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
