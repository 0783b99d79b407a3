"""FramesInMemory gives exactly LeRobotDataset's items (pads at episode ends included) and batches,
only for state-only datasets, and train_policy trains through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

import trainer.train_policy
from trainer.frames_in_memory import FramesInMemory, already_batched, supports
from trainer.train_policy import TrainPolicyConfig, train_policy

FPS = 30
REPO_ID = "local/frames"
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": (5,), "names": ["a", "b", "c", "d", "e"]},
    "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    "observation.advantage_positive": {"dtype": "bool", "shape": (1,), "names": None},
}
LENGTHS = (5, 2, 7)  # the second is shorter than the action chunk
TASKS = ("push the puck", "lift the block", "push the puck")


def small_dataset(root: Path) -> Path:
    """3 episodes of different lengths and 2 tasks, written with LeRobot's own API (as lerobot-record)."""
    dataset = LeRobotDataset.create(REPO_ID, FPS, FEATURES, root=root, use_videos=False)
    for episode, (length, task) in enumerate(zip(LENGTHS, TASKS, strict=True)):
        for k in range(length):
            dataset.add_frame({
                "observation.state": np.arange(5, dtype=np.float32) + 10 * episode + k,
                "action": np.array([k, -episode], np.float32),
                "observation.advantage_positive": np.array([k % 2 == 0]),
                "task": task,
            })  # fmt: skip
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("frames") / "ds")


def assert_same(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor), key
            assert got[key].dtype == value.dtype, key
            assert torch.equal(got[key], value), (key, got[key], value)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize(
    "deltas",
    [
        {"action": [k / FPS for k in range(4)]},  # the policy's action chunk: pads at episode ends
        {"action": [k / FPS for k in range(4)], "observation.state": [-2 / FPS, 0.0]},  # and at starts
    ],
    ids=["action-chunk", "and-past-states"],
)
def test_items_and_batches_are_lerobot_s(dataset_root, deltas):
    dataset = LeRobotDataset(REPO_ID, root=dataset_root, delta_timestamps=deltas)
    assert supports(dataset)
    frames = FramesInMemory(dataset)
    assert len(frames) == len(dataset) == sum(LENGTHS)
    items = [dataset[i] for i in range(len(dataset))]
    for i, expected in enumerate(items):
        assert_same(expected, frames[i])
    assert {item["task"] for item in items} == set(TASKS)  # the premise: 2 tasks
    assert items[4]["action_is_pad"].tolist() == [False, True, True, True]  # and pads at an episode end

    for indices in ([0], [4, 5, 6, 13], [13, 0, 6, 6, 2], list(range(len(dataset)))):
        batch = already_batched(frames.__getitems__(indices))
        assert_same(torch.utils.data.default_collate([items[i] for i in indices]), batch)

    loader = torch.utils.data.DataLoader(frames, batch_size=4, shuffle=True, collate_fn=already_batched)
    batch = next(iter(loader))
    assert batch["action"].shape == (4, 4, 2) and len(batch["task"]) == 4


def test_a_dataset_with_a_camera_is_not_supported(tmp_path):
    features = {
        **FEATURES,
        "observation.images.cam": {
            "dtype": "image",
            "shape": (8, 8, 3),
            "names": ["height", "width", "channels"],
        },
    }
    created = LeRobotDataset.create(REPO_ID, FPS, features, root=tmp_path / "ds", use_videos=False)
    for k in range(2):
        created.add_frame({
            "observation.state": np.zeros(5, np.float32), "action": np.zeros(2, np.float32),
            "observation.advantage_positive": np.array([True]),
            "observation.images.cam": np.full((8, 8, 3), k, np.uint8), "task": "look",
        })  # fmt: skip
    created.save_episode()
    created.finalize()
    dataset = LeRobotDataset(REPO_ID, root=tmp_path / "ds")
    assert dataset.meta.camera_keys == ["observation.images.cam"]
    assert not supports(dataset)
    with pytest.raises(ValueError, match="state-only"):
        FramesInMemory(dataset)


def test_a_subset_of_episodes_is_not_supported(dataset_root):
    assert not supports(LeRobotDataset(REPO_ID, root=dataset_root, episodes=[0, 2]))
    assert supports(LeRobotDataset(REPO_ID, root=dataset_root, episodes=[2, 1, 0]))


def test_train_policy_trains_on_frames_in_memory(dataset_root, tmp_path, monkeypatch):
    made = []

    class Counted(FramesInMemory):
        def __init__(self, dataset):
            super().__init__(dataset)
            made.append(self)

    monkeypatch.setattr(trainer.train_policy, "FramesInMemory", Counted)
    weights = tmp_path / "weights.npy"
    np.save(weights, np.linspace(1.0, 2.0, sum(LENGTHS)))
    cfg = TrainPolicyConfig(
        dataset_root=dataset_root, repo_id=REPO_ID, output_dir=tmp_path / "run", steps=3, batch_size=4,
        device="cpu", trackers=[], sample_weights=weights,
    )  # fmt: skip
    pretrained = train_policy(cfg)
    assert len(made) == 1  # the in-memory path
    assert (pretrained / "model.safetensors").exists()

    np.save(weights, np.ones(sum(LENGTHS) + 1))
    with pytest.raises(
        ValueError, match=f"sample_weights: {sum(LENGTHS) + 1} weights for {sum(LENGTHS)} frames"
    ):
        train_policy(TrainPolicyConfig(**{**vars(cfg), "output_dir": tmp_path / "other"}))
