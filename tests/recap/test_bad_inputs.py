"""Datasets that cannot be labeled fail naming the field and the episode, and write nothing."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.recap.labeling import label_main, run_labeling
from flywheel.recap.source import LabelInputError
from tests.recap.conftest import label_config
from tests.recap.synth import FEATURES, Spec, make_dataset


def _edit_episodes(root: Path, edit) -> None:
    for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        table = pd.read_parquet(path)
        edit(table)
        table.to_parquet(path)


def _fails(root: Path, out: Path, *words: str) -> None:
    with pytest.raises(LabelInputError) as error:
        run_labeling(label_config(root, out))
    for word in words:
        assert word in str(error.value), str(error.value)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))
    assert label_main(label_config(root, out)) == 2


def test_without_success_labels(tmp_path):
    root = tmp_path / "plain"
    dataset = LeRobotDataset.create("local/plain", 30, FEATURES, root=root, use_videos=False)
    for t in range(5):
        dataset.add_frame(
            {
                "observation.state": np.zeros(4, np.float32),
                "action": np.zeros(2, np.float32),
                "intervention": np.array([False]),
                "policy_version": np.array([1]),
                "next.reward": np.array([0.0], np.float32),
                "next.done": np.array([t == 4]),
                "task": "reach",
            }
        )
    dataset.save_episode()
    dataset.finalize()
    _fails(root, tmp_path / "out", "success", "episode 0")


def test_episode_without_success_value(tmp_path):
    root = make_dataset(tmp_path / "ds", [Spec("fast"), Spec("fast")])
    _edit_episodes(
        root, lambda t: t.__setitem__("success", [None if e == 1 else True for e in t["episode_index"]])
    )
    _fails(root, tmp_path / "out", "success", "episode 1")


def test_episode_without_task(tmp_path):
    root = make_dataset(tmp_path / "ds", [Spec("fast"), Spec("fast")])
    _edit_episodes(
        root, lambda t: t.__setitem__("tasks", [[] if e == 1 else ["a"] for e in t["episode_index"]])
    )
    _fails(root, tmp_path / "out", "tasks", "episode 1")


def test_inconsistent_episode_indices(tmp_path):
    root = make_dataset(tmp_path / "ds", [Spec("fast"), Spec("fast"), Spec("fast")])
    _edit_episodes(
        root, lambda t: t.__setitem__("episode_index", [5 if e == 2 else e for e in t["episode_index"]])
    )
    _fails(root, tmp_path / "out", "episode_index", "episode 5")


def test_frames_that_disagree_with_the_episode_table(tmp_path):
    root = make_dataset(tmp_path / "ds", [Spec("fast"), Spec("fast")])
    # Episode 0 claims 15 frames and episode 1 starts early: frames 15..19 belong to episode 0 on disk.
    bounds = {0: (0, 15), 1: (15, 35)}
    _edit_episodes(
        root, lambda t: t.__setitem__("dataset_from_index", [bounds[e][0] for e in t["episode_index"]])
    )
    _edit_episodes(
        root, lambda t: t.__setitem__("dataset_to_index", [bounds[e][1] for e in t["episode_index"]])
    )
    _edit_episodes(
        root, lambda t: t.__setitem__("length", [bounds[e][1] - bounds[e][0] for e in t["episode_index"]])
    )
    _fails(root, tmp_path / "out", "episode_index", "episode 1")
