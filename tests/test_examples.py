"""The seed's examples run end to end (tiny sizes), with the seed's flags as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import episode_table, labels_path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MUJOCO_GL": "egl"}
TRAIN = str(REPO / "examples/train_pi_star_recap.py")
SEED_REPO_ID = "your_username/your_dataset"  # the seed's placeholder, as a user pastes it
SMALL = ["--steps=2", "--batch_size=4", "--label.value.steps=10"]


@pytest.fixture(scope="module")
def recap_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's prepare command (its flags), at a few short episodes."""
    data = tmp_path_factory.mktemp("prepare") / "my_recap_dataset"
    subprocess.run(
        [sys.executable, str(REPO / "examples/prepare_recap_dataset.py"), f"--output_dir={data}",
         "--num_demo=2", "--num_auto=1", "--num_intervention=2", "--horizon=60"],
        env=ENV, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    return data


def train(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, TRAIN, *args], env=env or ENV, timeout=300, capture_output=True, text=True
    )


def test_prepare_then_train(recap_dataset, tmp_path):
    table = episode_table(LeRobotDataset("local/recap", root=recap_dataset))
    assert sorted(table["data_type"].unique()) in (["auto", "demo", "intervention"], ["auto", "demo"])
    assert (table["data_type"] == "demo").sum() == 2

    out = tmp_path / "policy"
    result = train([f"--dataset.repo_id={SEED_REPO_ID}", f"--dataset.root={recap_dataset}",
                    f"--output_dir={out}", *SMALL])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "train/pretrained_model/model.safetensors").exists()
    assert labels_path(out / "labeled").exists()


def test_the_seed_command_reads_the_local_copy_of_repo_id(recap_dataset, tmp_path):
    """`--dataset.repo_id` alone, as the seed writes it: LeRobot's local copy under HF_LEROBOT_HOME."""
    home = tmp_path / "lerobot_home"
    (home / SEED_REPO_ID).parent.mkdir(parents=True)
    (home / SEED_REPO_ID).symlink_to(recap_dataset)
    out = tmp_path / "policy"
    result = train([f"--dataset.repo_id={SEED_REPO_ID}", f"--output_dir={out}", *SMALL],
                   env={**ENV, "HF_LEROBOT_HOME": str(home)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "train/pretrained_model/model.safetensors").exists()


@pytest.mark.parametrize("where", ["repo_id", "root"])
def test_a_dataset_that_is_not_here_is_one_clear_line(tmp_path, where):
    """Not an `unrecognized arguments` error, nor a network traceback: the flag, its value, the fix."""
    env = {**ENV, "HF_LEROBOT_HOME": str(tmp_path / "empty_home")}
    flag = (
        f"--dataset.repo_id={SEED_REPO_ID}" if where == "repo_id" else f"--dataset.root={tmp_path / 'nope'}"
    )
    result = train([flag, f"--output_dir={tmp_path / 'out'}"], env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    if where == "repo_id":
        assert f"dataset.repo_id={SEED_REPO_ID!r}: no --dataset.root and no local copy" in lines[0]
        assert "Pass --dataset.root=DIR" in lines[0]
    else:
        assert f"dataset.root={str(tmp_path / 'nope')!r}: no LeRobotDataset there" in lines[0]
    assert not (tmp_path / "out").exists()


def test_train_help_lists_each_option_once():
    help_text = train(["--help"]).stdout
    # draccus 0.11 adds a "Config file for <field>" option per nested config, twice for top-level
    # ones (every draccus CLI, LeRobot's too); the fields themselves must each appear once.
    options = re.findall(r"^  (--[\w.]+)(?![\w.])(?! +str +Config file for)", help_text, flags=re.MULTILINE)
    assert "--dataset.repo_id" in options and "--dataset.root" in options
    assert len(options) == len(set(options)), sorted(o for o in options if options.count(o) > 1)
