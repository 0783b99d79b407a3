"""Opening a dataset for appending: new, existing, never used, or incompatible."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.dataset import DataType, EpisodeInfo, dataset_features, open_for_append, save_episode

FEATURES = dataset_features({"a": float, "b": float}, {"x": float}, use_videos=False)


def _frame(k: int) -> dict:
    return {"observation.state": np.array([k, k], np.float32), "action": np.zeros(1, np.float32),
            "intervention": np.array([False]), "policy_version": np.array([1]),
            "next.reward": np.zeros(1, np.float32), "next.done": np.array([False]), "task": "t"}  # fmt: skip


def test_a_dataset_created_by_a_run_that_saved_nothing_opens_again(tmp_path):
    open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False)  # e.g. the robot failed to connect
    dataset = open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False)
    for k in range(3):
        dataset.add_frame(_frame(k))
    save_episode(dataset, EpisodeInfo(DataType.AUTO, success=False))
    assert dataset.meta.total_episodes == 1


def test_incompatible_features_are_refused_naming_the_feature(tmp_path):
    dataset = open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False)
    dataset.add_frame(_frame(0))
    save_episode(dataset, EpisodeInfo(DataType.AUTO, success=True))
    other = dataset_features({"a": float, "b": float, "c": float}, {"x": float}, use_videos=False)
    with pytest.raises(ValueError, match=r"features\.observation\.state: float32\(3,\) differs"):
        open_for_append(tmp_path / "ds", "t/x", 30, other, "arm", False)
    with pytest.raises(ValueError, match="fps: 15 differs"):
        open_for_append(tmp_path / "ds", "t/x", 15, FEATURES, "arm", False)


def test_a_folder_that_is_not_a_dataset_is_never_touched(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"dataset\.root"):
        open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"
