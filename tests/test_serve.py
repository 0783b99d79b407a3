"""`flywheel serve`: the policy server, the daemon's remote policy, batching, hot-swap and outages."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from benchmarks.fixtures import SIM_ACTION_DIM, SIM_STATE_DIM, tiny_sim_checkpoint
from flywheel.contracts.dataset import DatasetConfig, dataset_features
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import DeployReply, DeployRequest, send_deploy
from flywheel.contracts.protocol import Message, MessageType, ProtocolError, decode, encode, request
from flywheel.contracts.registry import ModelRegistry
from flywheel.contracts.security import Security, make_keys
from flywheel.contracts.serving import ActionChunk, InferenceError, InferenceRequest, decode_reply
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.hotswap import Deployment
from flywheel.rollout.policy_source import LeRobotChunkPolicy, PolicySourceConfig, Prefix
from flywheel.rollout.remote_policy import PolicyServerUnavailable, RemoteChunkPolicy
from flywheel.rollout.teleop_link import LocalTeleop
from flywheel.serve.config import ServeConfig, ServedPolicyConfig
from flywheel.serve.server import PolicyServer
from robots.sim import SimArmConfig
from tests.netutil import destroy_keyed_context, free_address
from tests.test_rollout import FramePedal, ScriptedOperator

STEPS = 10  # the tiny checkpoints' chunk length
STATE_NAMES = [f"s{i}" for i in range(SIM_STATE_DIM)]
ACTION_NAMES = [f"a{i}" for i in range(SIM_ACTION_DIM)]
REPO = Path(__file__).resolve().parents[1]
# Where a test is not about timing: wait this long for a chunk (on a loaded 2-core machine an
# inference can take longer than a 10-step chunk lasts at 30 fps).
SLACK_S = 10.0


def observation(seed: int) -> dict:
    values = np.random.default_rng(seed).uniform(-1, 1, SIM_STATE_DIM)
    return dict(zip(STATE_NAMES, values.tolist(), strict=True))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_sim_checkpoint(tmp_path_factory.mktemp("ckpt") / "v", seed=0, chunk_size=STEPS)


def local_policy(path: Path, version: int = 1) -> LeRobotChunkPolicy:
    features = dataset_features(dict.fromkeys(STATE_NAMES, float), {}, use_videos=False)
    return LeRobotChunkPolicy(path, features, ACTION_NAMES, version, "cpu")


def start_server(path: Path, **kwargs) -> PolicyServer:
    kwargs.setdefault("deploy_address", None)
    server = PolicyServer(local_policy(path), None, kwargs.pop("address", free_address()), **kwargs)
    return server.start()


# --------------------------------------------------------------------------------------------------
# payloads


def test_payloads_round_trip_and_refuse_bad_fields():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    prefix = np.ones((4, SIM_ACTION_DIM), np.float32)
    request = InferenceRequest("arm0", 7, "push", {"a": 1.5, "b": -2.0, "front": image}, prefix, 3, 250.0)
    back = InferenceRequest.from_message(decode(encode(request.to_message())))
    assert (back.arm, back.request_id, back.task, back.state_names) == ("arm0", 7, "push", ("a", "b"))
    assert back.observation["a"] == 1.5 and np.array_equal(back.observation["front"], image)
    assert np.array_equal(back.prefix_actions, prefix) and back.prefix_delay == 3 and back.budget_ms == 250
    plain = InferenceRequest.from_message(InferenceRequest("arm0", 0, "", {"a": 1.0}).to_message())
    assert plain.prefix_actions is None and plain.prefix_delay is None

    chunk = np.random.default_rng(0).normal(size=(STEPS, 4)).astype(np.float32)
    reply = decode_reply(decode(encode(ActionChunk(7, chunk, 3, 12.5, 2).to_message())))
    assert isinstance(reply, ActionChunk) and np.array_equal(reply.chunk, chunk)
    assert (reply.request_id, reply.version, reply.inference_ms, reply.batch_size) == (7, 3, 12.5, 2)
    error = decode_reply(InferenceError(-1, "bad").to_message())
    assert error == InferenceError(-1, "bad")

    good = request.to_message()

    def broken(fields=None, arrays=None, drop=()):
        msg = Message(good.type, {**good.fields, **(fields or {})}, {**good.arrays, **(arrays or {})})
        for key in drop:
            msg.fields.pop(key, None)
            msg.arrays.pop(key, None)
        return msg

    cases = {
        "arm": broken({"arm": ""}),
        "request_id": broken({"request_id": -1}),
        "task": broken({"task": 3}),
        "state_names": broken({"state_names": "a,b"}),
        "budget_ms": broken({"budget_ms": "soon"}),
        "prefix_delay": broken({"prefix_delay": 1.5}),
        "arrays.state": broken(arrays={"state": np.zeros(3, np.float32)}),
        "non-finite": broken(arrays={"state": np.array([1.0, np.nan], np.float32)}),
        "both or neither": broken(drop=("prefix",)),
        "arrays.prefix": broken(arrays={"prefix": np.ones(4, np.float32)}),
        "image:front": broken(arrays={"image:front": np.zeros((2, 3), np.uint8)}),
        "arrays.junk": broken(arrays={"junk": np.zeros(1, np.uint8)}),
    }
    for expected, msg in cases.items():
        with pytest.raises(ProtocolError, match=re.escape(expected)):
            InferenceRequest.from_message(msg)
    with pytest.raises(ProtocolError, match="type: expected inference_request"):
        InferenceRequest.from_message(reply.to_message())

    reply_msg = reply.to_message()
    bad_replies = {
        "version": {"version": "3"},
        "inference_ms": {"inference_ms": -1},
        "batch_size": {"batch_size": 0},
        "request_id": {"request_id": None},
    }
    for field, change in bad_replies.items():
        with pytest.raises(ProtocolError, match=re.escape(f"action_chunk.fields.{field}")):
            ActionChunk.from_message(
                Message(reply_msg.type, {**reply_msg.fields, **change}, reply_msg.arrays)
            )
    for chunk_array in (
        np.zeros((3,), np.float32),
        np.full((2, 2), np.inf, np.float32),
        chunk.astype(np.float64),
    ):
        with pytest.raises(ProtocolError, match=re.escape("action_chunk.arrays.chunk")):
            ActionChunk.from_message(Message(reply_msg.type, reply_msg.fields, {"chunk": chunk_array}))
    with pytest.raises(ProtocolError, match=re.escape("inference_error.fields.reason")):
        InferenceError.from_message(Message(MessageType.INFERENCE_ERROR, {"request_id": 1, "reason": None}))


def test_serve_config_names_what_is_missing_or_wrong():
    with pytest.raises(ValueError, match=re.escape("--policy.path=DIR or --registry=DIR")):
        ServeConfig()
    with pytest.raises(ValueError, match="version: --version needs --registry"):
        ServeConfig(policy=ServedPolicyConfig(path=Path("x")), version=2)
    with pytest.raises(ValueError, match="max_batch"):
        ServeConfig(registry=Path("m"), max_batch=0)
    with pytest.raises(ValueError, match=re.escape("policy.server")):
        PolicySourceConfig(path=Path("x"), server="tcp://127.0.0.1:5570")


# --------------------------------------------------------------------------------------------------
# server and remote policy in one process


def test_remote_chunk_equals_in_process_chunk_and_round_trip_is_measured(checkpoint, caplog):
    """With the same noise seed (the server reseeds torch before each batch with --seed; the test
    seeds before the in-process call) the server's chunk is the in-process chunk."""
    server = start_server(checkpoint, seed=123)
    remote = RemoteChunkPolicy(server.address, ACTION_NAMES, arm="arm0", min_timeout_s=SLACK_S)
    local = local_policy(checkpoint)
    try:
        for seed in range(3):
            obs = observation(seed)
            chunk = remote.predict_chunk(obs, "push the puck")
            torch.manual_seed(123)
            expected = local.predict_chunk(obs, "push the puck")
            assert chunk.shape == (STEPS, SIM_ACTION_DIM) and chunk.dtype == np.float32
            np.testing.assert_allclose(chunk, expected, rtol=0, atol=1e-6)
        assert remote.version == 1 and remote.answered == 3
        # An RTC prefix travels with the request, and the server's policy gets it as the in-process one does.
        prefix = Prefix(np.random.default_rng(1).uniform(-1, 1, (6, SIM_ACTION_DIM)).astype(np.float32), 2)
        prefixed = remote.predict_chunk(obs, "push the puck", prefix)
        torch.manual_seed(123)
        np.testing.assert_allclose(prefixed, local.predict_chunk(obs, "push the puck", prefix), atol=1e-5)

        # Round trip vs in-process inference, on loopback (the report's numbers).
        remote_ms, local_ms = [], []
        for i in range(20):
            obs = observation(100 + i)
            start = time.perf_counter()
            remote.predict_chunk(obs, "push the puck")
            remote_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            local.predict_chunk(obs, "push the puck")
            local_ms.append((time.perf_counter() - start) * 1000)
        stats = remote.rtt_stats()
        print(
            f"\nloopback, tiny preset: remote round trip p50 {np.median(remote_ms):.1f} ms "
            f"(p95 {stats['p95_ms']:.1f}, server's own {stats['server_p50_ms']:.1f}), "
            f"in-process p50 {np.median(local_ms):.1f} ms"
        )
        assert stats["n"] == 24 and stats["last_ms"] > 0 and remote.latency_s is not None
    finally:
        remote.close()
        server.stop()
    assert "not answering" not in caplog.text


def test_requests_from_two_arms_are_computed_in_one_batch(checkpoint):
    server = start_server(checkpoint, batch_wait_s=0.15, max_batch=4)
    arms = [
        RemoteChunkPolicy(server.address, ACTION_NAMES, arm=f"arm{i}", min_timeout_s=SLACK_S)
        for i in range(2)
    ]
    chunks: dict[int, np.ndarray] = {}
    try:
        arms[0].predict_chunk(observation(0), "warm up")  # the first call loads lazily: not timed
        batches_before = server.batches
        go = threading.Barrier(2)

        def ask(i):
            go.wait()
            chunks[i] = arms[i].predict_chunk(observation(10 + i), "push")

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert server.batches == batches_before + 1, server.stats()  # one policy call for both
        assert server.batch_sizes[2] == 1 and all(a.last_batch_size == 2 for a in arms)
        assert not np.allclose(chunks[0], chunks[1])  # each arm got its own row
    finally:
        for arm in arms:
            arm.close()
        server.stop()


def test_rtc_prefixes_alike_in_delay_and_length_share_one_call_row_for_row(checkpoint):
    """Each row of a batched RTC call is the chunk its own call gives for the same noise; prefixes of
    another delay or length go to a call of their own."""
    policy = local_policy(checkpoint)
    rng = np.random.default_rng(3)
    prefixes = [Prefix(rng.uniform(-1, 1, (6, SIM_ACTION_DIM)).astype(np.float32), 2) for _ in range(3)]
    observations = [observation(20 + i) for i in range(3)]
    inner = policy.policy
    noise = torch.randn(3, inner.config.chunk_size, inner.config.max_action_dim)
    predict = inner.predict_action_chunk

    def with_noise(rows):
        inner.predict_action_chunk = lambda batch, **kw: predict(batch, noise=noise[rows], **kw)

    try:
        with_noise(slice(0, 3))
        together = policy.predict_chunks(observations, ["push"] * 3, prefixes)
        alone = []
        for i in range(3):
            with_noise(slice(i, i + 1))
            alone.append(policy.predict_chunk(observations[i], "push", prefixes[i]))
        with_noise(slice(0, 3))
        unguided = policy.predict_chunks(observations, ["push"] * 3)
    finally:
        inner.predict_action_chunk = predict
    np.testing.assert_allclose(together, np.stack(alone), atol=1e-5)
    assert np.abs(together - unguided).max() > 1e-3  # the prefixes did guide it
    with pytest.raises(ValueError, match="one call needs one"):
        policy.predict_chunks(observations[:2], ["push"] * 2, [prefixes[0], Prefix(prefixes[1].actions, 3)])

    server = start_server(checkpoint, batch_wait_s=0.15, max_batch=4)
    arms = [
        RemoteChunkPolicy(server.address, ACTION_NAMES, arm=f"arm{i}", min_timeout_s=SLACK_S)
        for i in range(3)
    ]
    try:
        arms[0].predict_chunk(observation(0), "warm up")
        before = dict(server.batch_sizes)
        go = threading.Barrier(3)
        delays = [2, 2, 4]  # arm2's delay differs: its own call

        def ask(i):
            go.wait()
            arms[i].predict_chunk(observations[i], "push", Prefix(prefixes[i].actions, delays[i]))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        sizes = {n: server.batch_sizes[n] - before.get(n, 0) for n in server.batch_sizes}
        assert sizes.get(2) == 1 and sizes.get(1) == 1, server.stats()
        assert [a.last_batch_size for a in arms] == [2, 2, 1]
    finally:
        for arm in arms:
            arm.close()
        server.stop()


def test_malformed_request_is_answered_with_the_field_and_the_server_lives_on(checkpoint):
    server = start_server(checkpoint)
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(server.address)
    try:
        msg = InferenceRequest("arm0", 5, "t", observation(0)).to_message()
        msg.arrays["state"] = msg.arrays["state"][:3]
        dealer.send_multipart(encode(msg))
        assert dealer.poll(10_000)
        reply = decode_reply(decode(dealer.recv_multipart()))
        assert isinstance(reply, InferenceError) and reply.request_id == 5
        assert "inference_request.arrays.state" in reply.reason
        dealer.send_multipart([b"garbage"])
        assert dealer.poll(10_000)
        assert decode_reply(decode(dealer.recv_multipart())).request_id == -1
        remote = RemoteChunkPolicy(server.address, ACTION_NAMES, min_timeout_s=SLACK_S)
        assert remote.predict_chunk(observation(0), "t").shape == (STEPS, SIM_ACTION_DIM)
        remote.close()
        assert server.refused["malformed"] == 2
    finally:
        dealer.close()
        server.stop()


def test_a_late_reply_is_discarded_and_an_outage_is_logged_once(checkpoint, caplog):
    server = start_server(checkpoint)
    original = server.policy.predict_chunks
    calls = []

    def slow_first(observations, tasks, prefixes=None):
        calls.append(len(observations))
        if len(calls) == 1:
            time.sleep(0.6)
        return original(observations, tasks, prefixes)

    server.policy.predict_chunks = slow_first
    remote = RemoteChunkPolicy(server.address, ACTION_NAMES, first_timeout_s=0.2)
    try:
        with caplog.at_level(logging.INFO, logger="flywheel.rollout.remote_policy"):
            with pytest.raises(PolicyServerUnavailable, match="no answer within 200 ms"):
                remote.predict_chunk(observation(0), "t")
            with pytest.raises(PolicyServerUnavailable):  # the same outage: not logged again
                remote.predict_chunk(observation(1), "t")
            remote.first_timeout_s = 5.0
            time.sleep(0.6)
            chunk = remote.predict_chunk(observation(2), "t")
        assert chunk.shape == (STEPS, SIM_ACTION_DIM)
        assert remote.discarded >= 1  # request 1's answer came after it was given up on
        assert caplog.text.count("not answering; holding") == 1
        assert caplog.text.count("answering again") == 1
    finally:
        remote.close()
        server.stop()


def test_with_keys_only_known_arms_are_answered(checkpoint, tmp_path):
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    make_keys(keys, ("daemon", "policy_server", "operator"))
    make_keys(stranger, ("daemon",))  # a valid key pair nobody authorised
    (stranger / "public" / "policy_server.key").write_bytes((keys / "public/policy_server.key").read_bytes())
    with pytest.raises(ValueError, match="not a loopback address"):
        PolicyServer(local_policy(checkpoint), None, "tcp://0.0.0.0:5999", None).start()
    deploy = free_address()
    ctx = zmq.Context()
    server = start_server(
        checkpoint, security=Security(keys, "policy_server"), ctx=ctx, deploy_address=deploy
    )
    known = RemoteChunkPolicy(
        server.address, ACTION_NAMES, security=Security(keys, "daemon"), min_timeout_s=SLACK_S
    )
    outsider = RemoteChunkPolicy(
        server.address, ACTION_NAMES, security=Security(stranger, "daemon"), first_timeout_s=1.0
    )
    try:
        assert known.predict_chunk(observation(0), "t").shape == (STEPS, SIM_ACTION_DIM)
        with pytest.raises(PolicyServerUnavailable):
            outsider.predict_chunk(observation(0), "t")
        assert server.requests == 1
        # The deploy endpoint is keyed the same way: an operator's rollback is heard (and refused:
        # nothing was deployed before), a stranger's is not.
        fields = DeployRequest.back().fields()
        reply = request(
            ctx, deploy, MessageType.DEPLOY, fields, 10, Security(keys, "operator"), server="policy_server"
        )
        assert "rollback: no earlier version" in DeployReply.from_message(reply).reason
        with pytest.raises(TimeoutError):
            request(
                ctx,
                deploy,
                MessageType.DEPLOY,
                fields,
                1,
                Security(stranger, "daemon"),
                server="policy_server",
            )
    finally:
        known.close()
        outsider.close()
        server.stop()
        destroy_keyed_context(ctx)


def test_deploy_endpoint_on_the_server_validates_swaps_and_rolls_back(checkpoint, tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(checkpoint)
    registry.publish(tiny_sim_checkpoint(tmp_path / "b", seed=1, chunk_size=STEPS), parent=1)
    v1 = registry.path(1)
    policy = local_policy(v1)
    deployment = Deployment(1, v1, registry.manifest(1).sha256)
    deploy = free_address()
    server = PolicyServer(policy, deployment, free_address(), deploy, seed=0).start()
    remote = RemoteChunkPolicy(server.address, ACTION_NAMES, min_timeout_s=SLACK_S)
    ctx = zmq.Context.instance()
    try:
        first = remote.predict_chunk(observation(0), "t")  # the smoke test's observation
        bad = dataclasses.replace(DeployRequest.of_version(registry, 2), sha256="0" * 64)
        reply = send_deploy(ctx, deploy, bad, 60)
        assert reply.status == "rejected" and "sha256" in reply.reason and reply.acting_version == 1
        reply = send_deploy(ctx, deploy, DeployRequest.of_version(registry, 2), 60)
        assert reply.fields() == {"status": "swapped", "version": 2, "acting_version": 2}
        second = remote.predict_chunk(observation(0), "t")
        assert remote.version == 2 and not np.allclose(first, second)
        reply = send_deploy(ctx, deploy, DeployRequest.back(), 60)
        assert reply.fields() == {"status": "swapped", "version": 1, "acting_version": 1}
        np.testing.assert_allclose(remote.predict_chunk(observation(0), "t"), first, atol=1e-6)
        assert remote.version == 1
    finally:
        remote.close()
        server.stop()


# --------------------------------------------------------------------------------------------------
# the daemon driven by `flywheel serve` in another process


class ServeProcess:
    def __init__(self, registry: Path, version: int, address: str, deploy: str):
        argv = [
            sys.executable,
            "-m",
            "flywheel.cli",
            "serve",
            f"--registry={registry}",
            f"--version={version}",
            f"--wire.address={address}",
            f"--wire.deploy={deploy}",
            "--policy.device=cpu",
            "--policy.torch_threads=1",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if "policy server v" in line and " on " in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 60.0):
        if not self.ready.wait(timeout):
            self.kill()
            raise TimeoutError("flywheel serve did not start:\n" + "".join(self.lines[-30:]))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


class TickLog:
    """A sink appended to the running daemon's: what each tick did, and when."""

    def __init__(self):
        self.ticks: list[tuple[float, int, str, int]] = []  # time, frame, source, version

    def start_episode(self, episode, task): ...
    def end_episode(self, end): ...
    def policy_swapped(self, version, frame): ...
    def close(self): ...

    def tick(self, tick):
        self.ticks.append((time.monotonic(), tick.frame, tick.source, tick.policy_version))

    def policy_since(self, t: float, version: int | None = None) -> list[tuple]:
        return [x for x in self.ticks if x[0] > t and x[2] == "policy" and version in (None, x[3])]

    def wait(self, predicate, timeout: float = 60.0, what: str = ""):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}: last ticks {self.ticks[-5:]}")
            time.sleep(0.05)


@pytest.mark.timeout(240)
def test_daemon_on_a_served_policy_swaps_holds_through_an_outage_and_resumes(checkpoint, tmp_path, caplog):
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(checkpoint)
    registry.publish(tiny_sim_checkpoint(tmp_path / "b", seed=1, chunk_size=STEPS), parent=1)
    address, deploy = free_address(), free_address()
    server = ServeProcess(registry.root, 1, address, deploy)  # loads while the daemon starts
    wire = WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address())
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"),
        policy=PolicySourceConfig(server=address),
        dataset=DatasetConfig(root=tmp_path / "ds", repo_id="test/serve", record=False),
        wire=wire,
        episodes=1,
        fps=30,
        episode_time_s=120.0,
        report_cadence=False,
    )
    pedal = FramePedal(range(0))
    daemon = RolloutDaemon(cfg, link=LocalTeleop(ScriptedOperator(), pedal))
    log_ = TickLog()
    runner = threading.Thread(target=daemon.run)
    caplog.set_level(logging.INFO, logger="flywheel.rollout.remote_policy")
    runner.start()
    try:
        assert daemon.wait_until_running(60)
        daemon.sinks.append(log_)
        server.wait_ready()  # until then the daemon holds
        log_.wait(lambda: len(log_.policy_since(0, 1)) >= 15, what="v1 acting")

        reply = send_deploy(zmq.Context.instance(), deploy, DeployRequest.of_version(registry, 2), 60)
        assert reply.fields() == {"status": "swapped", "version": 2, "acting_version": 2}
        swapped_at = time.monotonic()
        log_.wait(lambda: len(log_.policy_since(swapped_at, 2)) >= 15, what="v2 acting")

        # The daemon's own deploy endpoint refuses: the weights act on the server.
        local = send_deploy(zmq.Context.instance(), wire.deploy, DeployRequest.of_version(registry, 1), 60)
        assert local.status == "rejected" and "policy.server" in local.reason, local.fields()

        server.kill()
        killed_at = time.monotonic()
        kill_frame = log_.ticks[-1][1]
        time.sleep(1.5)  # the arm holds
        # The operator takes over while the server is down, and hands back before it returns.
        now = log_.ticks[-1][1]
        pedal.down = takeover = range(now + 3, now + 18)
        log_.wait(lambda: log_.ticks[-1][1] > takeover.stop + 2, what="the takeover to end")
        server = ServeProcess(registry.root, 2, address, deploy)
        server.wait_ready()
        restarted_at = time.monotonic()
        log_.wait(lambda: len(log_.policy_since(restarted_at, 2)) >= 15, what="v2 acting again")
    finally:
        daemon.stop()
        runner.join(timeout=60)
        server.kill()

    remote = daemon.policy
    print(f"\ndaemon's round trips to the served policy: {remote.rtt_stats()}")
    policy = [x for x in log_.ticks if x[2] == "policy"]
    versions = [v for _, _, _, v in policy]
    runs = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert runs == [1, 2], runs  # v1, then v2 from the swap on (and after the restart)
    # The outage: after the kill at most one chunk's remaining actions act, each on its own tick
    # (the PolicyRunner drops actions whose tick has passed); then the arm holds until the restart.
    during = [x for x in log_.ticks if killed_at < x[0] < restarted_at]
    late_policy = [frame for _, frame, source, _ in during if source == "policy"]
    assert len(late_policy) <= STEPS and all(f <= kill_frame + STEPS for f in late_policy), late_policy
    held = [x for x in during if x[2] == "hold"]
    assert len(held) >= 30, len(held)  # 1.5 s + the restart, at 30 fps
    # The pedal works throughout: every frame it was down, the operator's command was sent.
    operated = [(frame, source) for _, frame, source, _ in log_.ticks if frame in takeover]
    assert operated == [(frame, "operator") for frame in takeover], operated
    assert daemon.runner.errors >= 1
    # Once per outage, and each outage ends (a loaded machine can add a short one of its own).
    outages = caplog.text.count("not answering; holding")
    assert outages >= 1 and caplog.text.count("answering again") == outages == remote.outages
    frames = [frame for _, frame, _, _ in log_.ticks]
    assert frames == list(range(frames[0], frames[0] + len(frames)))  # the loop ticked on throughout


# --------------------------------------------------------------------------------------------------
# across network namespaces: the daemon on the arm's host, `flywheel serve` on the GPU host


@pytest.fixture
def make_topology(request):
    from tests.netns import topology_factory

    return topology_factory(request)


class HostProcess:
    """A process in a namespace whose stderr is kept, line by line, as it comes."""

    def __init__(self, net, host: str, argv: list[str], env: dict):
        self.proc = net.run(host, argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(what) < count:
            tail = self.text()[-3000:]
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what!r}\n{tail}"
            assert time.monotonic() < deadline, f"no {what!r} x{count} within {timeout} s\n{tail}"
            time.sleep(0.05)


ENDED = "intervention frames ("  # the daemon's log line at the end of each episode


@pytest.mark.timeout(300)
def test_daemon_on_one_host_served_from_another_swaps_holds_and_resumes(make_topology, checkpoint, tmp_path):
    """The real `flywheel rollout` (sim, 30 fps, recording) in the arm's namespace, `flywheel serve` in
    the GPU host's, CurveZMQ between them. On the server: a hot-swap by `flywheel deploy` (run on that
    host, naming the server's key), then the server SIGKILLed mid-episode and restarted; then the link
    cut and restored. Every frame the arm recorded says which version acted, or that it held."""
    net = make_topology(["arm0"], hub="gpu")
    keys = tmp_path / "keys"
    make_keys(keys, ("daemon", "policy_server", "operator"))
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(checkpoint)
    registry.publish(tiny_sim_checkpoint(tmp_path / "b", seed=1, chunk_size=STEPS), parent=1)
    address = f"tcp://{net.address('gpu')}:5570"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    key_flags = [f"--wire.keys_dir={keys}"]

    def serve(version: int) -> HostProcess:
        argv = [sys.executable, "-m", "flywheel.cli", "serve", f"--registry={registry.root}"]
        argv += [f"--version={version}", f"--wire.address={address}", "--wire.deploy=tcp://127.0.0.1:5571"]
        argv += [*key_flags, "--policy.device=cpu", "--policy.torch_threads=1"]
        server = HostProcess(net, "gpu", argv, env)
        server.wait_for(f"policy server v{version:04d} on")
        return server

    server = serve(1)
    root = tmp_path / "arm0-data"
    argv = [sys.executable, "-m", "flywheel.cli", "rollout", "--robot", "sim", f"--policy.server={address}"]
    argv += ["--local_teleop=true", "--pedal.type=schedule", "--pedal.down=[[40,50]]", "--episodes=0"]
    argv += ["--episode_time_s=2", f"--dataset.root={root}", "--dataset.repo_id=test/served", *key_flags]
    daemon = HostProcess(net, "arm0", argv, env)
    try:
        daemon.wait_for(ENDED, count=2, timeout=90)  # v1 has acted
        deploy = [sys.executable, "-m", "flywheel.cli", "deploy", f"--registry={registry.root}"]
        deploy += ["--version=2", "--wire.deploy=tcp://127.0.0.1:5571", "--wire.deploy_key=policy_server"]
        deploy += key_flags
        assert "status=swapped" in net.check_output("gpu", deploy, timeout=120, cwd=REPO, env=env)
        ended = daemon.text().count(ENDED)
        daemon.wait_for(ENDED, count=ended + 2)  # v2 has acted

        server.proc.kill()  # mid-episode: the arm holds
        daemon.wait_for("not answering; holding")
        time.sleep(2.0)
        server = serve(2)
        daemon.wait_for("answering again")
        ended = daemon.text().count(ENDED)
        daemon.wait_for(ENDED, count=ended + 2)

        net.cut("arm0")
        daemon.wait_for("not answering; holding", count=2)
        time.sleep(1.0)
        net.restore("arm0")
        daemon.wait_for("answering again", count=2)
        ended = daemon.text().count(ENDED)
        daemon.wait_for(ENDED, count=ended + 1)
    finally:
        daemon.proc.send_signal(signal.SIGINT)
        daemon.proc.wait(timeout=60)
        server.proc.kill()
    assert daemon.proc.returncode == 0, daemon.text()[-3000:]

    import pandas as pd

    frames = pd.concat([pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet"))])
    frames = frames.sort_values("index")
    operated = frames["intervention"].astype(bool).to_numpy()
    version = frames["policy_version"].to_numpy()
    # The pedal worked throughout: frames 40-49 of every episode are the operator's.
    assert np.array_equal(operated, frames["frame_index"].between(40, 49).to_numpy())
    assert np.all(version[operated] == 0)
    acted = version[~operated]
    policy = acted[acted != 0]  # 0: held (an episode's first round trip, and the outages)
    runs = [int(v) for i, v in enumerate(policy) if i == 0 or v != policy[i - 1]]
    assert runs == [1, 2], runs  # v1, then v2 from the swap on, before and after the outages
    held = int((acted == 0).sum())
    assert held >= 60, held  # 2 s of the server away and its restart, at 30 fps, and the cut
    log = daemon.text()
    outages = log.count("not answering; holding")
    assert outages == log.count("answering again") >= 2, log[-3000:]
