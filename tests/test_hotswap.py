"""The model registry and hot-swapping weights into a running daemon."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from safetensors.torch import load_file, save_file

from benchmarks.fixtures import tiny_sim_checkpoint
from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import DeployReply, DeployRequest
from flywheel.contracts.protocol import MessageType, request
from flywheel.contracts.registry import WEIGHTS_FILE, ModelRegistry, sha256_file
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.hotswap import all_finite
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import SimArmConfig
from tests.netutil import free_address
from tests.test_rollout import FramePedal, ScriptedOperator


def tiny_checkpoint(path: Path, seed: int) -> Path:
    return tiny_sim_checkpoint(path, seed=seed, chunk_size=10)


def tampered_copy(registry: ModelRegistry, version: int, change) -> DeployRequest:
    """Republish `version` with its weights changed by `change(state_dict)`; returns its deploy."""
    source = registry.path(version)
    weights = load_file(source / WEIGHTS_FILE)
    change(weights)
    staging = source.parent / f"edit-{len(registry.versions())}"
    staging.mkdir()
    for f in source.iterdir():
        if f.name not in (WEIGHTS_FILE, "manifest.json"):
            (staging / f.name).write_bytes(f.read_bytes())
    save_file(weights, staging / WEIGHTS_FILE)
    manifest = registry.publish(staging, parent=version)
    return DeployRequest.of_version(registry, manifest.version)


def test_registry_numbers_versions_never_overwrites_and_verifies(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    first = registry.publish(tiny_checkpoint(tmp_path / "a", seed=0), episodes=[2, 0, 1], kind="nightly")
    second = registry.publish(tiny_checkpoint(tmp_path / "b", seed=1), parent=1)
    assert (first.version, second.version) == (1, 2)
    assert registry.versions() == [1, 2] and registry.latest() == 2
    assert registry.manifest(1).episodes == [0, 1, 2] and registry.manifest(2).parent == 1
    assert registry.manifest(2).sha256 == sha256_file(registry.path(2) / WEIGHTS_FILE)
    assert registry.verify(1)

    before = (registry.path(1) / WEIGHTS_FILE).read_bytes()
    (registry.path(3)).mkdir()  # a folder in the way of the next number, e.g. made by hand
    (registry.path(3) / "notes.txt").write_text("mine")
    assert registry.publish(tmp_path / "a").version == 4  # skipped, kept, never reused
    assert (registry.path(3) / "notes.txt").read_text() == "mine" and registry.versions() == [1, 2, 4]
    # A folder that appears between numbering and publishing (another process) is not replaced.
    registry._numbered_folders = lambda: [2]
    with pytest.raises(FileExistsError, match="never overwritten"):
        registry.publish(tmp_path / "a")
    assert (registry.path(3) / "notes.txt").read_text() == "mine"
    del registry._numbered_folders
    assert (registry.path(1) / WEIGHTS_FILE).read_bytes() == before

    with open(registry.path(2) / WEIGHTS_FILE, "r+b") as f:  # bit rot
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    assert not registry.verify(2)
    with pytest.raises(FileNotFoundError, match="v0009"):
        registry.manifest(9)


def test_daemon_swaps_good_weights_between_ticks_and_refuses_bad_ones(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_checkpoint(tmp_path / "a", seed=0))
    registry.publish(tiny_checkpoint(tmp_path / "b", seed=1), parent=1)
    v1, v2 = registry.manifest(1), registry.manifest(2)
    bad = {
        "corrupted": dataclasses.replace(_deploy(registry, 2), sha256="0" * 64),
        "nan": tampered_copy(
            registry, 2, lambda w: next(t.fill_(float("nan")) for t in w.values() if t.is_floating_point())
        ),
        "wrong_shape": tampered_copy(
            registry, 2, lambda w: w.update({k: torch.zeros(3, 3) for k in list(w)[:1]})
        ),
    }

    wire = WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address())
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"),
        policy=PolicySourceConfig(path=registry.path(1), version=v1.version),
        dataset=DatasetConfig(root=tmp_path / "ds", repo_id="test/swap"),
        wire=wire,
        episodes=1,
        fps=30,
        episode_time_s=6.0,
        report_cadence=False,
    )
    daemon = RolloutDaemon(cfg, link=LocalTeleop(ScriptedOperator(), FramePedal(range(0))))
    runner = threading.Thread(target=daemon.run)
    runner.start()
    replies = {}
    try:
        _wait_for_frames(daemon, 10)
        for name, deploy in bad.items():
            replies[name] = daemon.deploy(deploy, timeout_s=60)
        garbage = request(daemon.context, wire.deploy, MessageType.DEPLOY, {"version": "x"}, 60)  # by hand
        replies["garbage"] = DeployReply.from_message(garbage)
        replies["good"] = daemon.deploy(_deploy(registry, 2), 60)
        time.sleep(0.5)
        replies["rollback"] = daemon.deploy(DeployRequest.back(), 60)
        time.sleep(0.5)
        runner.join(timeout=60)  # the episode runs to its timeout and is saved
    finally:
        if runner.is_alive():
            daemon.stop()
            runner.join(timeout=60)

    for name in ("corrupted", "nan", "wrong_shape", "garbage"):
        assert replies[name].status == "rejected", (name, replies[name])
        assert replies[name].acting_version == 1
    assert "sha256" in replies["corrupted"].reason
    assert "non-finite" in replies["nan"].reason
    assert "shapes" in replies["wrong_shape"].reason
    assert "deploy.version" in replies["garbage"].reason
    assert replies["good"].fields() == {"status": "swapped", "version": 2, "acting_version": 2}
    assert replies["rollback"].fields() == {"status": "swapped", "version": 1, "acting_version": 1}

    dataset = LeRobotDataset("test/swap", root=tmp_path / "ds")
    versions = [int(dataset[i]["policy_version"]) for i in range(dataset.num_frames)]
    acted = [v for v in versions if v != 0]  # 0: the policy had no action ready and the arm held
    runs = [v for i, v in enumerate(acted) if i == 0 or v != acted[i - 1]]
    assert runs == [v1.version, v2.version, v1.version], runs  # v1 until the swap, v2, then rolled back


def _deploy(registry: ModelRegistry, version: int) -> DeployRequest:
    return DeployRequest.of_version(registry, version)


def _wait_for_frames(daemon: RolloutDaemon, frames: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.rate.lateness_ms and len(daemon.rate.lateness_ms) >= frames:
            return
        time.sleep(0.02)
    raise TimeoutError("the daemon did not start ticking")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_all_finite_finds_every_inf_and_nan_and_passes_the_extremes(dtype):
    """The 16-bit check reads exponent bits instead of calling isfinite: the same answer on every case."""
    values = torch.randn(1000).to(dtype)
    values[3], values[4] = torch.finfo(dtype).max, torch.finfo(dtype).tiny / 2  # largest, subnormal
    assert all_finite(values)
    for bad in (float("inf"), float("-inf"), float("nan")):
        broken = values.clone()
        broken[17] = bad
        assert not all_finite(broken), bad
