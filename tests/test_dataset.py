"""Opening a dataset for appending (new, existing, never used, or incompatible) and snapshots of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import (
    DATA_TYPE,
    END_REASON,
    EPISODE_COLUMNS,
    NUM_INTERVENTION_FRAMES,
    OPERATOR,
    POLICY_VERSIONS,
    ROBOT,
    SEED,
    SUCCESS,
    DataType,
    EpisodeInfo,
    FrameType,
    data_files,
    dataset_features,
    episode_files,
    open_for_append,
    read_episode_table,
    read_frame_table,
    save_episode,
    snapshot,
)

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


def test_features_with_other_names_are_refused_naming_the_first_that_differs(tmp_path):
    # Same dtypes and shapes, other names: e.g. a sim dataset recorded before the sim's features got
    # LeRobot's `.pos`/`.vel` suffixes. Appending would put values under names that mean other things.
    dataset = open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False)
    dataset.add_frame(_frame(0))
    save_episode(dataset, EpisodeInfo(DataType.AUTO, success=True))
    renamed = dataset_features({"a": float, "b.pos": float}, {"x": float}, use_videos=False)
    with pytest.raises(
        ValueError,
        match=r"features\.observation\.state: name 1 is 'b\.pos', the existing dataset's is 'b' at ",
    ):
        open_for_append(tmp_path / "ds", "t/x", 30, renamed, "arm", False)
    other_action = dataset_features({"a": float, "b": float}, {"x.vel": float}, use_videos=False)
    with pytest.raises(
        ValueError, match=r"features\.action: name 0 is 'x\.vel', the existing dataset's is 'x'"
    ):
        open_for_append(tmp_path / "ds", "t/x", 30, other_action, "arm", False)
    swapped = dataset_features({"b": float, "a": float}, {"x": float}, use_videos=False)
    with pytest.raises(ValueError, match=r"name 0 is 'b', the existing dataset's is 'a'"):
        open_for_append(tmp_path / "ds", "t/x", 30, swapped, "arm", False)
    assert open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False).meta.total_episodes == 1


def test_a_folder_that_is_not_a_dataset_is_never_touched(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"dataset\.root"):
        open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


# --- datasets as stock LeRobot writes them -------------------------------------------------------
STOCK_FEATURES = {
    "observation.state": {"dtype": "float32", "shape": (2,), "names": ["a", "b"]},
    "action": {"dtype": "float32", "shape": (1,), "names": ["x"]},
}


def stock_dataset(root: Path, lengths: tuple[int, ...] = (3, 4, 5)) -> Path:
    """A dataset written the way stock `lerobot-record` writes it: LeRobot's own LeRobotDataset.create,
    add_frame and save_episode (the very calls lerobot-record makes), no flywheel column. LeRobot (0.4.4
    and 0.6.1) packs every episode into one data file and one metadata file by default."""
    dataset = LeRobotDataset.create("local/stock", 30, STOCK_FEATURES, root=root, use_videos=False)
    for length in lengths:
        for k in range(length):
            state = np.array([k, -k], np.float32)
            dataset.add_frame({"observation.state": state, "action": np.array([k], np.float32), "task": "t"})
        dataset.save_episode()
    dataset.finalize()
    return root


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes: to show that nothing in it changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_snapshot_of_episodes_that_share_one_data_file(tmp_path):
    root = stock_dataset(tmp_path / "stock")
    assert len(list((root / "data").rglob("*.parquet"))) == 1  # the premise: three episodes, one file
    before = tree(root)

    assert snapshot(root, tmp_path / "snap") == [0, 1, 2]  # raised shutil.SameFileError before

    copy = LeRobotDataset("local/stock", root=tmp_path / "snap")
    assert (copy.num_episodes, copy.num_frames) == (3, 12)
    assert copy[11]["observation.state"].tolist() == [4.0, -4.0]
    assert tree(root) == before  # the source is untouched


def test_a_snapshot_is_never_written_into_the_dataset_it_copies(tmp_path):
    root = stock_dataset(tmp_path / "stock", (3,))
    before = tree(root)
    with pytest.raises(ValueError, match=r"snapshot: .* must not be inside the dataset"):
        snapshot(root, root / "snap")
    assert tree(root) == before


def test_a_never_used_dataset_with_anything_else_in_it_is_refused_not_removed(tmp_path):
    root = tmp_path / "ds"
    open_for_append(root, "t/x", 30, FEATURES, "arm", False)  # saved nothing: only meta/info.json
    (root / "mine").mkdir()  # the user's (empty) folder: removed with the whole root before
    with pytest.raises(FileExistsError, match=r"dataset\.root: .* holds no saved episode .*mine"):
        open_for_append(root, "t/x", 30, FEATURES, "arm", False)
    assert (root / "mine").is_dir() and (root / "meta" / "info.json").exists()

    (root / "meta" / "notes.txt").write_text("mine")
    (root / "mine").rmdir()
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        open_for_append(root, "t/x", 30, FEATURES, "arm", False)
    assert (root / "meta" / "notes.txt").read_text() == "mine"


def test_frame_types_and_data_types_are_one_mapping():
    assert [t.data_type for t in FrameType] == list(DataType)
    assert [FrameType.of(str(t)) for t in DataType] == list(FrameType)
    assert [int(t) for t in FrameType] == [0, 1, 2]  # stored in sampler weights and demo reports


def test_the_episode_column_constants_are_episode_info_fields():
    columns = (DATA_TYPE, SUCCESS, NUM_INTERVENTION_FRAMES, POLICY_VERSIONS, OPERATOR, ROBOT, SEED)
    assert (*columns, END_REASON) == EPISODE_COLUMNS


def test_the_readers_give_every_episode_and_frame_in_order(tmp_path):
    dataset = open_for_append(tmp_path / "ds", "t/x", 30, FEATURES, "arm", False)
    for e in range(2):
        for k in range(3):
            dataset.add_frame(_frame(k))
        save_episode(dataset, EpisodeInfo(DataType.DEMO if e else DataType.AUTO, success=bool(e)))
    assert len(data_files(tmp_path / "ds")) == len(episode_files(tmp_path / "ds")) == 2  # one file each
    episodes = read_episode_table(episode_files(tmp_path / "ds"))
    assert episodes["episode_index"].tolist() == [0, 1] and episodes[DATA_TYPE].tolist() == ["auto", "demo"]
    frames = read_frame_table(data_files(tmp_path / "ds"), ["index", "episode_index"])
    assert frames["index"].tolist() == list(range(6))
    assert frames["episode_index"].tolist() == [0, 0, 0, 1, 1, 1]


def test_each_episode_is_sealed_in_files_of_its_own_also_after_reopening(tmp_path):
    """Every saved episode's two files are complete (footer written) before the next episode starts,
    the third and later ones too (lerobot 0.6's finalize() closes the writers only once), and an
    episode appended after reopening takes new files rather than rewriting the last ones."""
    root = tmp_path / "ds"
    dataset = open_for_append(root, "t/x", 30, FEATURES, "arm", False)
    for e in range(5):
        if e == 3:
            dataset = open_for_append(root, "t/x", 30, FEATURES, "arm", False)
        for k in range(2 + e):
            dataset.add_frame(_frame(k))
        save_episode(dataset, EpisodeInfo(DataType.AUTO, success=False, seed=e))
        assert len(data_files(root)) == len(episode_files(root)) == e + 1
        episodes = read_episode_table(episode_files(root))  # raises on a file without its footer
        assert episodes["seed"].tolist() == list(range(e + 1))
        assert len(read_frame_table(data_files(root), ["index"])) == sum(range(2, 3 + e))
    copy = LeRobotDataset("t/x", root=root)
    assert (copy.num_episodes, copy.num_frames) == (5, 20)


def test_the_layout_paths_are_lerobot_s():
    from lerobot.datasets.utils import DEFAULT_DATA_PATH, DEFAULT_EPISODES_PATH

    from flywheel.contracts.dataset import DATA_PATH, EPISODES_PATH

    assert (DATA_PATH, EPISODES_PATH) == (DEFAULT_DATA_PATH, DEFAULT_EPISODES_PATH)


def test_the_dataset_contract_and_the_uplink_import_without_torch():
    """An arm's uplink reads the layout only: importing it, and `flywheel uplink`'s way to it through
    the CLI, must not pull in torch (about 1 GB)."""
    import subprocess
    import sys

    code = (
        "import sys, flywheel.cli, flywheel.uplink.agent; flywheel.cli.COMMANDS['uplink'].config_class; "
        "print(sorted({'torch', 'lerobot'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
