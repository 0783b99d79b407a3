"""What a long-running daemon must not accumulate: per saved episode, per hot-swap.

The soak (benchmarks/soak.py) measures the process's memory over minutes; these check the causes it
found, by counting, so that they fail the same way every time.
"""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from lerobot.datasets.io_utils import load_episodes
from lerobot.utils.feature_utils import build_dataset_frame

from benchmarks.fixtures import tiny_sim_checkpoint
from flywheel.contracts.dataset import (
    DONE,
    INTERVENTION,
    POLICY_VERSION,
    REWARD,
    DatasetConfig,
    DataType,
    EpisodeInfo,
    dataset_features,
    open_for_append,
    save_episode,
)
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.registry import ModelRegistry
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import SimArmConfig
from tests.test_hotswap import _deploy, _wait_for_frames
from tests.test_rollout import FramePedal, ScriptedOperator

STATE = {f"joint_{i}": float for i in range(3)}
ACTION = {f"delta_{i}": float for i in range(2)}


def _record(dataset, frames: int, versions: list[int]) -> None:
    for i in range(frames):
        row = build_dataset_frame(dataset.features, {k: 0.1 * i for k in STATE}, prefix="observation")
        row["action"] = np.zeros(len(ACTION), dtype=np.float32)
        row[INTERVENTION] = np.array([False])
        row[POLICY_VERSION] = np.array([versions[0] if versions else 0], dtype=np.int64)
        row[REWARD] = np.array([0.0], dtype=np.float32)
        row[DONE] = np.array([i == frames - 1])
        row["task"] = "push"
        dataset.add_frame(row)
    save_episode(dataset, EpisodeInfo(DataType.AUTO, success=False, policy_versions=versions))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_saving_an_episode_writes_nothing_to_the_datasets_cache(tmp_path, monkeypatch):
    """Each save once reloaded the whole episode table with datasets.Dataset.from_parquet, which
    wrote a new Arrow copy of it into the datasets cache: one more cache folder per episode, each
    the size of the whole table (quadratic on disk), and 0.3-0.5 MB of RSS per episode in the soak.
    The table kept in memory must still be what a fresh open reads."""
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    features = dataset_features(STATE, ACTION, use_videos=False)
    root = tmp_path / "data"

    dataset = open_for_append(root, "test/memory", 30, features, "sim", use_videos=False)
    for n, versions in ((5, [1]), (6, []), (7, [1, 2])):  # [] too: an empty list column
        _record(dataset, n, versions)
    assert _files(cache) == []
    pd.testing.assert_frame_equal(dataset.meta.episodes.to_pandas(), load_episodes(root).to_pandas())

    dataset = open_for_append(root, "test/memory", 30, features, "sim", use_videos=False)
    opened = _files(cache)  # opening reads the table once (LeRobot's own load_episodes)
    for _ in range(3):
        _record(dataset, 4, [3])
    assert _files(cache) == opened
    episodes = dataset.meta.episodes.to_pandas()
    pd.testing.assert_frame_equal(episodes, load_episodes(root).to_pandas())
    assert list(episodes["episode_index"]) == list(range(6))
    assert list(episodes["dataset_from_index"]) == [0, 5, 11, 18, 22, 26]


def test_hot_swapped_out_policies_are_freed(tmp_path):
    """After many hot-swaps, nothing keeps a replaced policy (and its weights) alive: only the
    acting one is left."""
    registry = ModelRegistry(tmp_path / "models")
    for seed in (0, 1):
        registry.publish(tiny_sim_checkpoint(tmp_path / f"ckpt-{seed}", seed=seed, chunk_size=10))
    wire = WireConfig.in_process("test-memory")  # inproc: no TCP port
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"),
        policy=PolicySourceConfig(path=registry.path(1)),
        dataset=DatasetConfig(root=tmp_path / "ds", record=False),
        wire=wire,
        episodes=0,
        fps=30,
        episode_time_s=60.0,
        report_cadence=False,
    )

    def load_and_track(deployment):
        policy = daemon.load_deployment(deployment)  # the daemon's own loader
        loaded.append(weakref.ref(policy))
        return policy

    link = LocalTeleop(ScriptedOperator(), FramePedal(range(0)))
    daemon = RolloutDaemon(cfg, link=link, load_policy=load_and_track)
    loaded = [weakref.ref(daemon.policy)]
    runner = threading.Thread(target=daemon.run)
    runner.start()
    statuses = []
    try:
        _wait_for_frames(daemon, 1)
        for swap in range(8):
            deploy = _deploy(registry, 2 if swap % 2 == 0 else 1)
            reply = daemon.deploy(deploy, timeout_s=60)
            statuses.append(reply.status)
    finally:
        daemon.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert statuses == ["swapped"] * 8, statuses
    assert len(loaded) == 9
    gc.collect()
    alive = [i for i, ref in enumerate(loaded) if ref() is not None]
    assert alive == [8], f"policies still referenced after being swapped out: {alive[:-1]}"
    assert loaded[8]() is daemon.policy
