"""Policy training through accelerate: checkpoints, resume, several processes, loadable output."""

from __future__ import annotations

import json

import numpy as np
import pytest

import trainer.train_policy as train_policy_module
from flywheel.contracts.dataset import dataset_features
from flywheel.rollout.policy_source import LeRobotChunkPolicy
from robots.sim import ACTION_NAMES, STATE_NAMES
from trainer.train_policy import TrainPolicyConfig, train_policy


def small_config(sim_dataset, out, **overrides) -> TrainPolicyConfig:
    base = dict(
        dataset_root=sim_dataset,
        output_dir=out,
        steps=4,
        batch_size=4,
        save_every=2,
        log_every=1,
        device="cpu",
        trackers=["tensorboard"],
    )
    return TrainPolicyConfig(**{**base, **overrides})


def test_trains_checkpoints_resumes_and_the_result_loads_in_the_daemon(sim_dataset, tmp_path):
    out = tmp_path / "run"
    train_policy(small_config(sim_dataset, out, steps=2))
    assert json.loads((out / "checkpoints/last/step.json").read_text()) == {"step": 2}
    first = (out / "pretrained_model/model.safetensors").read_bytes()

    pretrained = train_policy(small_config(sim_dataset, out, steps=4, resume=True))
    assert json.loads((out / "checkpoints/last/step.json").read_text()) == {"step": 4}
    assert (pretrained / "model.safetensors").read_bytes() != first  # it trained on
    assert list((out / "flywheel").rglob("events.out.tfevents.*"))  # TensorBoard logs

    features = dataset_features({n: float for n in STATE_NAMES}, {n: float for n in ACTION_NAMES}, False)
    policy = LeRobotChunkPolicy(pretrained, features, list(ACTION_NAMES), version=2, device="cpu")
    chunk = policy.predict_chunk(dict.fromkeys(STATE_NAMES, 0.1), "push the puck to the goal")
    assert chunk.shape[1] == len(ACTION_NAMES) and np.isfinite(chunk).all()


def test_frames_in_memory_false_trains_from_lerobot_dataset(sim_dataset, tmp_path, monkeypatch):
    """The benchmark's comparison path: LeRobotDataset per row, FramesInMemory never built."""

    class NotWanted(train_policy_module.FramesInMemory):
        def __init__(self, dataset):
            raise AssertionError("frames_in_memory=False built FramesInMemory")

    monkeypatch.setattr(train_policy_module, "FramesInMemory", NotWanted)
    out = tmp_path / "run"
    train_policy(small_config(sim_dataset, out, steps=2, frames_in_memory=False))
    assert json.loads((out / "checkpoints/last/step.json").read_text()) == {"step": 2}
    assert (out / "pretrained_model/model.safetensors").exists()


def test_resume_without_a_checkpoint_says_where_it_looked(sim_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train_policy(small_config(sim_dataset, tmp_path / "none", resume=True))


def test_wandb_offline_logs_without_a_network(sim_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_policy(small_config(sim_dataset, tmp_path / "run", steps=2, trackers=["wandb"]))
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
