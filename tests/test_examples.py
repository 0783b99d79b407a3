"""The seed's examples run end to end (tiny sizes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.dataset import episode_table

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MUJOCO_GL": "egl"}


def test_prepare_then_train(tmp_path):
    data, out = tmp_path / "recap", tmp_path / "policy"
    subprocess.run(
        [sys.executable, str(REPO / "examples/prepare_recap_dataset.py"), f"--output_dir={data}",
         "--num_demo=2", "--num_auto=1", "--num_intervention=2", "--horizon=60"],
        env=ENV, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    table = episode_table(LeRobotDataset("local/recap", root=data))
    assert sorted(table["data_type"].unique()) in (["auto", "demo", "intervention"], ["auto", "demo"])
    assert (table["data_type"] == "demo").sum() == 2

    result = subprocess.run(
        [sys.executable, str(REPO / "examples/train_pi_star_recap.py"), f"--dataset.root={data}",
         f"--output_dir={out}", "--steps=2", "--batch_size=4", "--label.value.steps=10"],
        env=ENV, timeout=300, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "train/pretrained_model/model.safetensors").exists()
    assert (out / "labeled/meta/recap_labels.json").exists()
