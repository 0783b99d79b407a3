"""The soak: the daemon on the sim for a bounded time, with periodic hot-swaps and injected faults.

Run with `flywheel bench --cases=[soak] --soak_minutes=20` (not part of the default cases). Faults,
each injected on a schedule while the daemon runs at 30 Hz:
  - malformed and hostile ZeroMQ messages on the daemon's deploy socket,
  - garbage and corrupted-weight deploy requests,
  - a good deploy (a real hot-swap), alternating between two versions.
It reports episodes recorded, faults injected and survived (the daemon kept running and never
acted on anything bad), frames lost (frames the daemon counted against frames in the dataset:
must be 0) and memory growth of the process: in all (first tick to the end), and the steady-state
rate over the second half of the run (after warm-up), as least-squares slopes of the RSS sampled
once per cycle against minutes, hot-swaps and episodes. Swaps and episodes both come at a steady
rate here, so the per-swap and per-episode slopes are the same growth counted two ways: each bounds
what one swap or one episode can cost, neither tells which of them drives it. It also reports how
much the run wrote into the Hugging Face datasets cache (a private one for the run, so that other
processes' writes are not counted), which a reload of the episode table after every saved episode
once grew quadratically.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import datasets
import numpy as np
import psutil
import zmq
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from benchmarks.fixtures import tiny_sim_checkpoint
from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import DeployReply, DeployRequest, send_deploy
from flywheel.contracts.protocol import MessageType, decode, request
from flywheel.contracts.registry import WEIGHTS_FILE, ModelRegistry
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import SimArmConfig
from teleop.pedals import SimPedalConfig, make_pedal
from teleop.sim_operator import SimOperator, SimOperatorConfig

HOSTILE = [
    [b"deploy", b"{not json"],
    [b"deploy", b'{"v":99,"type":"deploy","seq":1,"t":0}'],
    [b"deploy", b"[" * 50_000],
    [
        b"deploy",
        b'{"v":1,"type":"deploy","seq":1,"t":0,"arrays":[{"name":"a","dtype":"float32","shape":[1125899906842624,4]}]}',
        b"x",
    ],
    [
        b"teleop_state",
        b'{"v":1,"type":"teleop_state","seq":1,"t":0,"fields":{}}',
    ],  # the wrong kind of message
]


def raw_request(ctx: zmq.Context, address: str, frames: list[bytes], timeout_s: float = 10.0) -> dict:
    """Send raw frames as a request and decode the reply (the daemon must answer, and refuse)."""
    socket = ctx.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send_multipart(frames)
        if not socket.poll(int(timeout_s * 1000)):
            return {"status": "no reply"}
        return decode(socket.recv_multipart()).fields
    finally:
        socket.close()


def soak(work: Path, minutes: float) -> dict[str, Any]:
    cache = work / "datasets-cache"
    with mock.patch.object(datasets.config, "HF_DATASETS_CACHE", cache):
        return _soak(work, minutes, cache)


def _soak(work: Path, minutes: float, cache: Path) -> dict[str, Any]:
    registry = ModelRegistry(work / "models")
    for seed in (0, 1):
        registry.publish(tiny_sim_checkpoint(work / f"ckpt-{seed}", seed=seed, chunk_size=10))
    corrupt = _corrupted_copy(registry, work)
    wire = WireConfig.in_process("soak")
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"), policy=PolicySourceConfig(path=registry.path(1)),
        dataset=DatasetConfig(root=work / "data", repo_id="soak/data"), wire=wire, episodes=0, fps=30,
        episode_time_s=6.67, report_cadence=False,
    )  # fmt: skip
    operator = LocalTeleop(
        SimOperator(SimOperatorConfig()), make_pedal(SimPedalConfig(press_probability=0.3))
    )
    daemon = RolloutDaemon(cfg, link=operator)
    process = psutil.Process()
    runner = threading.Thread(target=daemon.run)
    runner.start()
    injected: dict[str, int] = {"hostile_messages": 0, "garbage_deploys": 0, "corrupt_deploys": 0, "swaps": 0}
    refused = 0
    rss_start = None
    samples: list[tuple[float, int, int, int]] = []  # minutes, RSS, swaps so far, episodes so far
    ctx = zmq.Context.instance()
    alive = True
    deadline = time.monotonic() + minutes * 60
    try:
        daemon.wait_until_running()
        rss_start = process.memory_info().rss
        t0 = time.monotonic()
        cycle = 0
        while time.monotonic() < deadline and runner.is_alive():
            cycle += 1
            for frames in HOSTILE:
                refused += raw_request(ctx, wire.deploy, frames)["status"] == "rejected"
                injected["hostile_messages"] += 1
            # A deliberately malformed body, spelled by hand: the daemon's decoder must refuse it.
            reply = DeployReply.from_message(
                request(ctx, wire.deploy, MessageType.DEPLOY, {"version": "garbage"}, 60)
            )
            injected["garbage_deploys"] += 1
            refused += reply.status == "rejected"
            reply = send_deploy(ctx, wire.deploy, corrupt, 60)
            injected["corrupt_deploys"] += 1
            refused += reply.status == "rejected"
            version = 2 if cycle % 2 else 1
            reply = send_deploy(ctx, wire.deploy, DeployRequest.of_version(registry, version), 60)
            injected["swaps"] += reply.accepted
            time.sleep(10)
            samples.append(
                (
                    (time.monotonic() - t0) / 60,
                    process.memory_info().rss,
                    injected["swaps"],
                    len(daemon.results),
                )
            )
        alive = runner.is_alive()
    finally:
        daemon.stop()
        runner.join(timeout=120)
    rss_end = process.memory_info().rss
    cache_written = _tree_bytes(cache)  # before the dataset is read back below
    counted = sum(r.frames for r in daemon.results if r.data_type is not None)
    on_disk = LeRobotDataset("soak/data", root=work / "data").num_frames
    return {
        "minutes": minutes,
        "episodes_recorded": sum(r.data_type is not None for r in daemon.results),
        **{f"injected_{k}": v for k, v in injected.items()},
        "faults_refused": refused,
        "faults_injected": injected["garbage_deploys"]
        + injected["corrupt_deploys"]
        + injected["hostile_messages"],
        "daemon_alive_to_the_end": alive,
        "frames_lost": counted - on_disk,
        "memory_growth_mb": (rss_end - (rss_start or rss_end)) / 2**20,
        **_steady_state_growth(samples),
        "datasets_cache_written_mb": cache_written / 2**20,
    }


STEADY_STATE_MIN_SAMPLES = 6  # a minute of cycles: RSS moves by 1-2 MB from one sample to the next


def _steady_state_growth(samples: list[tuple[float, int, int, int]]) -> dict[str, float | None]:
    """RSS growth over the second half of the samples, and its least-squares slope against minutes,
    swaps and episodes there. None when the second half is shorter than a minute (the one-minute
    --quick run): over a few samples the slope is noise."""
    half = np.asarray(samples[len(samples) // 2 :], dtype=float).reshape(-1, 4)
    minutes, rss_mb, swaps, episodes = half.T
    rss_mb = rss_mb / 2**20
    enough = len(half) >= STEADY_STATE_MIN_SAMPLES

    def slope(x: np.ndarray) -> float | None:
        return float(np.polyfit(x, rss_mb, 1)[0]) if enough and len(np.unique(x)) >= 2 else None

    return {
        "memory_growth_second_half_mb": float(rss_mb[-1] - rss_mb[0]) if enough else None,
        "memory_mb_per_minute_second_half": slope(minutes),
        "memory_mb_per_swap_second_half": slope(swaps),
        "memory_mb_per_episode_second_half": slope(episodes),
    }


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def _corrupted_copy(registry: ModelRegistry, work: Path) -> DeployRequest:
    """A well-formed deploy of version 2 whose weights file is truncated (the announced hash kept)."""
    broken = work / "broken"
    broken.mkdir()
    for f in registry.path(2).iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 2] if f.name == WEIGHTS_FILE else data)
    return DeployRequest(2, broken, registry.manifest(2).sha256)
