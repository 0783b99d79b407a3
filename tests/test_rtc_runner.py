"""Real-time chunking in the daemon: what PolicyRunner hands the policy (prefix and delay), and how
LeRobotChunkPolicy maps a prefix into the policy's own action space."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from flywheel.rollout.policy_runner import PolicyRunner
from flywheel.rollout.policy_source import Prefix

CHUNK, DIM = 10, 2


class RecordingPolicy:
    """Chunk n is rows 100 n + i (i = 0..CHUNK-1): an action says which chunk and row it is."""

    version = 1

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s, self.calls = sleep_s, []

    def predict_chunk(self, observation, task, prefix: Prefix | None = None) -> np.ndarray:
        n = len(self.calls)
        self.calls.append((observation["tick"], prefix))
        time.sleep(self.sleep_s)
        return np.repeat(100.0 * n + np.arange(CHUNK, dtype=np.float32)[:, None], DIM, axis=1)

    def reset(self) -> None:
        pass


def drive(runner: PolicyRunner, ticks: int, period_s: float) -> list[np.ndarray | None]:
    """Ticks at (about) the given period, as the control loop calls the runner."""
    out = []
    start = time.monotonic()
    for tick in range(ticks):
        pause = start + tick * period_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        got = runner.next_action({"tick": tick}, "task", tick)
        out.append(None if got is None else got[0])
    return out


def test_runner_hands_the_queued_actions_and_the_measured_delay():
    period, sleep = 0.05, 0.12  # a chunk takes 2.4 periods: delay 3
    policy = RecordingPolicy(sleep_s=sleep)
    runner = PolicyRunner(policy, refill_at=6, blocking=False, max_wait_s=0.0, rtc=True, period_s=period)
    try:
        drive(runner, 24, period)
    finally:
        runner.close()
    assert policy.calls[0][1] is None  # the episode's first chunk: nothing queued
    # Later requests carry a prefix (none only if the queue ran dry: a very loaded machine).
    prefixed = [(n, p) for n, (_, p) in enumerate(policy.calls) if p is not None]
    assert len(prefixed) >= 2 and len(prefixed) + 1 + runner.misses >= len(policy.calls)
    for n, prefix in prefixed:
        # The rows of the previous chunk still queued at the request, starting with this tick's.
        rows = prefix.actions[:, 0]
        assert rows[0] // 100 == n - 1 and np.array_equal(np.diff(rows), np.ones(len(rows) - 1))
        assert rows[-1] % 100 == CHUNK - 1 and 1 <= len(rows) <= 6
        assert prefix.actions.shape[1] == DIM
        # Measured: at least ceil(sleep / period) ticks, and no more than a loaded machine explains.
        assert math.ceil(sleep / period) <= prefix.delay <= math.ceil((sleep + 1.0) / period)
    assert len(runner.latency) >= len(policy.calls) - 1
    assert runner.latency.p95() >= sleep


def test_first_delay_before_any_measurement_is_one_tick():
    runner = PolicyRunner(RecordingPolicy(), refill_at=4, blocking=False, rtc=True, period_s=0.05)
    try:
        assert runner.delay_ticks() == 1
        runner.latency.add(0.101)
        assert runner.delay_ticks() == 3
    finally:
        runner.close()


@pytest.mark.parametrize("rtc, blocking", [(False, False), (True, True)])
def test_no_prefix_without_rtc_or_in_lockstep(rtc, blocking):
    policy = RecordingPolicy()
    runner = PolicyRunner(policy, refill_at=4, blocking=blocking, max_wait_s=0.2, rtc=rtc, period_s=0.01)
    try:
        actions = drive(runner, 25, 0.01)
    finally:
        runner.close()
    assert len(policy.calls) >= 3 and all(prefix is None for _, prefix in policy.calls)
    if blocking:  # lockstep: every chunk computed on the tick it starts on, used whole
        assert [a[0] for a in actions] == [100.0 * (t // CHUNK) + t % CHUNK for t in range(25)]


def test_lerobot_policy_gets_the_prefix_normalized_and_padded(tmp_path):
    from flywheel.contracts.dataset import dataset_features
    from flywheel.policies.pi_star_recap import (
        PiStarRECAPConfig,
        PiStarRECAPPolicy,
        make_pi_star_recap_pre_post_processors,
    )
    from flywheel.rollout.policy_source import LeRobotChunkPolicy

    state_names, action_names = ["s0", "s1", "s2"], ["a0", "a1"]
    cfg = PiStarRECAPConfig(
        preset="tiny",
        device="cpu",
        chunk_size=CHUNK,
        n_action_steps=CHUNK,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (3,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5])
    stats = {
        "observation.state": {"mean": torch.zeros(3), "std": torch.ones(3)},
        "action": {"mean": mean, "std": std},
    }
    torch.manual_seed(0)
    pre, post = make_pi_star_recap_pre_post_processors(cfg, dataset_stats=stats)
    for part in (PiStarRECAPPolicy(cfg), pre, post):
        part.save_pretrained(tmp_path)
    features = dataset_features(dict.fromkeys(state_names, float), dict.fromkeys(action_names, float), False)
    policy = LeRobotChunkPolicy(tmp_path, features, action_names, version=1, device="cpu")
    assert policy.policy.config.rtc_config is None  # the checkpoint has none

    seen = {}
    predict = policy.policy.predict_action_chunk

    def recording(batch, **kwargs):
        seen.update(kwargs)
        return predict(batch, **kwargs)

    policy.policy.predict_action_chunk = recording
    observation = dict.fromkeys(state_names, 0.3)
    actions = np.array([[3.0, -1.0], [5.0, -2.5], [1.0, 0.0]], dtype=np.float32)
    chunk = policy.predict_chunk(observation, "task", Prefix(actions, delay=2))
    assert chunk.shape == (CHUNK, 2) and np.isfinite(chunk).all()
    assert seen["inference_delay"] == 2 and seen["execution_horizon"] == 3
    prev = seen["prev_chunk_left_over"]
    assert prev.shape == (1, CHUNK, 2)
    assert torch.allclose(prev[0, :3], (torch.from_numpy(actions) - mean) / std)
    assert torch.equal(prev[0, 3:], torch.zeros(CHUNK - 3, 2))
    # Set on first use: LeRobot's RTC defaults, over the whole chunk.
    assert policy.policy.config.rtc_config.execution_horizon == CHUNK
    # The hard-masked rows land on the prefix in the robot's units (the postprocessor's inverse).
    assert np.abs(chunk[:2] - actions[:2]).max() < 0.1 * np.abs(actions[:2]).max()

    # A prefix longer than the chunk is cropped; without a prefix, no RTC keywords at all.
    policy.predict_chunk(observation, "task", Prefix(np.zeros((CHUNK + 5, 2), np.float32), delay=1))
    assert seen["prev_chunk_left_over"].shape == (1, CHUNK, 2) and seen["execution_horizon"] == CHUNK
    seen.clear()
    policy.predict_chunk(observation, "task")
    assert seen == {}


def test_a_policy_without_rtc_ignores_the_prefix(caplog):
    from flywheel.rollout.policy_source import LeRobotChunkPolicy

    class NoRTC:
        config = type("C", (), {"device": "cpu", "chunk_size": CHUNK})()

        def predict_action_chunk(self, batch):
            return torch.zeros(1, CHUNK, DIM)

    policy = LeRobotChunkPolicy.__new__(LeRobotChunkPolicy)
    policy.policy = NoRTC()
    assert not policy._rtc_ready()
    assert "does not support real-time chunking" in caplog.text
