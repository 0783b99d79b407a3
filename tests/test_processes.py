"""The daemon and `flywheel run` as real processes: crash safety and the end-to-end sim run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.dataset import episode_table
from flywheel.protocol import LatestValueSubscriber, MessageType
from tests.netutil import free_address

ENV = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}


def flywheel(*args: str) -> list[str]:
    return [sys.executable, "-m", "flywheel.cli", *args]


def test_sigkill_mid_episode_leaves_saved_episodes_loadable_and_appendable(tmp_path):
    root, events = tmp_path / "ds", free_address()
    cmd = flywheel(
        "rollout",
        "--robot",
        "sim",
        "--local_teleop=true",
        "--fps=0",
        "--episodes=0",
        f"--dataset.root={root}",
        f"--wire.daemon_events={events}",
        f"--wire.teleop_state={free_address()}",
        f"--wire.deploy={free_address()}",
    )
    ctx = zmq.Context.instance()
    sub = LatestValueSubscriber(ctx, [events], [MessageType.EPISODE_SAVED, MessageType.OBSERVATION]).start()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        killed_at = None
        while time.monotonic() < deadline:
            saved = sub.latest(MessageType.EPISODE_SAVED)
            obs = sub.latest(MessageType.OBSERVATION)
            # Mid-episode: two episodes saved, and a later one than the last saved is 50+ frames in.
            if (
                saved
                and obs
                and saved.message.fields["episode_index"] >= 1
                and obs.message.fields["frame"] >= 50
                and obs.message.fields["episode"] > saved.message.fields["episode_index"]
            ):
                proc.send_signal(signal.SIGKILL)
                killed_at = obs.message.fields
                break
            time.sleep(0.005)
        assert killed_at is not None, "the daemon never got two episodes saved and a third under way"
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.stop()

    dataset = LeRobotDataset("test/killed", root=root)
    saved_episodes = dataset.num_episodes
    assert saved_episodes >= 2
    assert saved_episodes <= killed_at["episode"]  # the episode in progress is not there
    table = episode_table(dataset)
    assert table["length"].sum() == dataset.num_frames
    frames_before = dataset.num_frames
    files_before = {p: p.read_bytes() for p in (root / "data").rglob("*.parquet")}

    # A restart appends after what was saved, without touching it.
    subprocess.run(
        [arg if arg != "--episodes=0" else "--episodes=1" for arg in cmd],
        env=ENV,
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dataset = LeRobotDataset("test/killed", root=root)
    assert dataset.num_episodes == saved_episodes + 1
    assert dataset.num_frames > frames_before
    assert all(path.read_bytes() == content for path, content in files_before.items())
    assert list(episode_table(dataset)["episode_index"]) == list(range(saved_episodes + 1))


def test_flywheel_run_records_episodes_with_interventions_as_printed(tmp_path):
    root = tmp_path / "ds"
    out = subprocess.run(
        flywheel(
            "run",
            "--robot",
            "sim",
            "--episodes",
            "3",
            "--fps=0",
            f"--dataset.root={root}",
            f"--wire.daemon_events={free_address()}",
            f"--wire.teleop_state={free_address()}",
            f"--wire.deploy={free_address()}",
            f"--run_dir={tmp_path / 'run'}",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(True|False)\s+(\w+)\s+(\d+)\s+yes\s+(\w+)$", out.stdout, re.M)
    assert len(rows) == 3, out.stdout

    dataset = LeRobotDataset("test/run", root=root)
    table = episode_table(dataset)
    assert len(table) == 3
    for (_, frames, success, data_type, interventions, _), (_, row) in zip(
        rows, table.iterrows(), strict=True
    ):
        assert row["length"] == int(frames)
        assert bool(row["success"]) == (success == "True")
        assert row["data_type"] == data_type
        assert row["num_intervention_frames"] == int(interventions)
    assert (table["num_intervention_frames"] > 0).any()

    # The per-frame tags agree with the per-episode counts.
    frames = dataset.hf_dataset.with_format("numpy")[:]
    flags, episode = frames["intervention"].reshape(-1), frames["episode_index"].reshape(-1)
    for index, row in table.iterrows():
        assert flags[episode == index].sum() == row["num_intervention_frames"]
    assert Path(tmp_path / "run" / "teleop.log").exists()
