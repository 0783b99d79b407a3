"""The whole loop as a user starts it: `flywheel run --robot sim --trainer=true`.

After K episodes the trainer labels, trains, publishes, gates and deploys a version, and the
running daemon swaps it in: the dataset then holds frames of two policy versions from one run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tests.netutil import free_address

REPO = Path(__file__).resolve().parents[1]


def test_run_with_trainer_swaps_a_trained_version_into_the_running_daemon(tmp_path):
    root = tmp_path / "data"
    cmd = [
        sys.executable, "-m", "flywheel.cli", "run", "--robot", "sim", "--fps=0", "--episodes=0",
        "--trainer=true", f"--trainer_config={REPO / 'configs/trainer/sim-quick.yaml'}", "--train_every=3",
        f"--dataset.root={root}", f"--registry={tmp_path / 'models'}", f"--run_dir={tmp_path / 'run'}",
        f"--wire.daemon_events={free_address()}", f"--wire.teleop_state={free_address()}",
        f"--wire.deploy={free_address()}",
    ]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    versions: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not {-1, 1} <= versions:
            time.sleep(2)
            versions = _policy_versions(root)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert {-1, 1} <= versions, f"versions seen: {versions}\n{output[-4000:]}"
    assert (tmp_path / "models" / "v0001" / "manifest.json").exists()
    assert "deploy v0001: swapped" in output
    trainer_log = (tmp_path / "run" / "trainer.log").read_text()
    assert "'status': 'swapped'" in trainer_log


def _policy_versions(root: Path) -> set[int]:
    """Versions that acted in saved episodes (read from the sealed data files, as they appear)."""
    found: set[int] = set()
    for path in (root / "data").glob("*/*.parquet"):
        try:
            found |= set(pd.read_parquet(path, columns=["policy_version"])["policy_version"].tolist())
        except Exception:  # being written right now
            continue
    return found - {0}
