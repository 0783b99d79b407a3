"""A trainer SIGKILLed mid-iteration resumes it: no episode lost, none counted twice, no duplicate version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flywheel.cli import main as flywheel_main
from flywheel.contracts.registry import ModelRegistry
from flywheel.recap.indicator_balance import labels_of
from tests.netutil import free_address


def _trainer(tmp_path, data):
    cmd = [
        sys.executable, "-m", "flywheel.cli", "trainer", f"--dataset_root={data}",
        f"--work_dir={tmp_path / 'work'}",
        f"--registry={tmp_path / 'models'}", "--every=2", "--nightly_steps=60", "--save_every=10",
        "--batch_size=8", "--label.value.steps=20", "--gate.sim_episodes=0", "--deploy=false", "--poll_s=0.5",
        "--trackers=[]", f"--wire.daemon_events={free_address()}",
    ]  # fmt: skip
    return subprocess.Popen(cmd, env={**os.environ, "MUJOCO_GL": "egl"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for(path, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_killed_mid_iteration_resumes_without_loss_or_double_count(tmp_path):
    data = tmp_path / "data"
    assert flywheel_main([
        "rollout", "--robot", "sim", "--local_teleop=true", "--fps=0", "--episodes=4", "--episode_time_s=2",
        f"--dataset.root={data}", f"--wire.daemon_events={free_address()}", f"--wire.deploy={free_address()}",
    ]) == 0  # fmt: skip
    iteration = tmp_path / "work" / "iter-0001"

    first = _trainer(tmp_path, data)
    _wait_for(iteration / "train" / "checkpoints" / "last" / "step.json")
    first.send_signal(signal.SIGKILL)  # mid-training: labels and a checkpoint on disk, nothing published
    first.wait(timeout=30)
    assert not (tmp_path / "models").exists() or ModelRegistry(tmp_path / "models").versions() == []

    second = _trainer(tmp_path, data)
    try:
        _wait_for(tmp_path / "work" / "state.json")
    finally:
        second.send_signal(signal.SIGTERM)
        output, _ = second.communicate(timeout=120)
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["used"] == [0, 1, 2, 3]  # every episode, once
    assert state["iterations"] == 1
    assert json.loads((iteration / "episodes.json").read_text()) == [0, 1, 2, 3]
    assert ModelRegistry(tmp_path / "models").versions() == [1]  # published once
    assert "resumed from step" in output
    assert not (tmp_path / "work" / "iter-0002").exists()
    # The conditioning diagnostic ran (on every episode: 4 are too few to hold one out).
    strength = json.loads((iteration / "conditioning.json").read_text())
    assert strength["frames"] > 0 and np.isfinite(strength["loss_gap"])
    # The policy's samples: positive-labeled frames get positive_share (0.9) of them.
    weights = np.load(iteration / "sample_weights.npy")
    positive = labels_of(iteration / "labeled")
    assert positive.any() and not positive.all() and (weights >= 0).all()
    assert weights[positive].sum() == pytest.approx(0.9 * weights.sum())
