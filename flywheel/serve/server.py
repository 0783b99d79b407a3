"""The policy server: observation in, action chunk out, for several arms at once.

One thread owns the ROUTER socket and the acting policy. Each round it reads every request waiting
in the socket (those that arrived while the previous batch was computing), keeps the newest per arm
(an older one is answered "superseded"), answers "expired" to one that waited in the queue longer
than its arm's budget, and computes up to `max_batch` of the rest in ONE call of the policy's
`predict_chunks` (the same `LeRobotChunkPolicy` the daemon runs in-process); the others wait for the
next round. Requests whose observations differ in layout (feature names, camera shapes) cannot share
a tensor batch: each layout is its own call; requests with an RTC prefix share a call when their
delays and prefix lengths agree (LeRobot's RTC guides a call with one delay). Between two rounds it
adopts a deployed policy, which the deploy endpoint (the daemon's `HotSwap`: the same checks, load
and smoke inference on the newest observation seen) has validated on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from flywheel.contracts.dataset import dataset_features
from flywheel.contracts.protocol import MAX_ARRAY_BYTES, MAX_HEADER_BYTES, ProtocolError, decode, encode
from flywheel.contracts.registry import WEIGHTS_FILE, ModelRegistry, sha256_file
from flywheel.contracts.security import Security, secure_server
from flywheel.contracts.serving import ActionChunk, InferenceError, InferenceRequest
from flywheel.rollout.hotswap import Deployment, HotSwap
from flywheel.rollout.policy_source import LeRobotChunkPolicy, PolicySourceConfig, Prefix, resolved_version

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    identity: bytes
    request: InferenceRequest
    received_at: float


class PolicyServer:
    def __init__(
        self,
        policy: LeRobotChunkPolicy,
        deployment: Deployment | None,
        address: str,
        deploy_address: str | None,
        security: Security | None = None,
        max_batch: int = 8,
        batch_wait_s: float = 0.0,
        seed: int | None = None,
        device: str = "cpu",
        ctx: zmq.Context | None = None,
        stats_every_s: float = 0.0,
    ):
        """`policy` acts first; `deployment` names its files (the reference of a deploy's shape check,
        and the target of a rollback). `deploy_address` None: no deploy endpoint."""
        self.policy = policy
        self.address, self.deploy_address, self._security = address, deploy_address, security
        self.max_batch, self.batch_wait_s, self.seed, self.device = max_batch, batch_wait_s, seed, device
        self.stats_every_s = stats_every_s
        self._ctx = ctx or zmq.Context.instance()
        self._backlog: deque[_Pending] = deque()
        self._features: dict[tuple, dict] = {}  # per observation layout: LeRobot dataset features
        self._newest: tuple[dict[str, Any], str, tuple] | None = None  # observation, task, layout
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.batches = 0  # policy calls
        self.batch_sizes: Counter[int] = Counter()  # rows per call -> calls
        self.requests = 0
        self.answered = 0
        self.refused: Counter[str] = Counter()  # why requests were answered with an error
        self.last_inference_ms = 0.0
        self.hotswap = (
            HotSwap(
                self._ctx,
                deploy_address,
                self._load,
                self._newest_observation,
                _action_dim(policy),
                deployment,
                security=security,
            )
            if deploy_address
            else None
        )
        self._thread = threading.Thread(target=self._serve, name="policy-server", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> PolicyServer:
        self._thread.start()
        if self.hotswap is not None:
            self.hotswap.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            self.stop()
            if isinstance(self._error, ValueError | zmq.ZMQError):
                raise self._error  # names the address (not loopback without keys, in use, ...)
            raise RuntimeError(f"policy server: could not bind {self.address}: {self._error!r}")
        log.info(
            "policy server v%04d on %s (deploy: %s), batches of up to %d",
            self.version,
            self.address,
            self.deploy_address or "none",
            self.max_batch,
        )
        return self

    def request_stop(self) -> None:
        """Ask the serving thread to end (safe from a signal handler); `stop` then joins it."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        if self.hotswap is not None:
            self.hotswap.stop()

    def wait(self) -> None:
        """Serve until `stop` (from another thread or a signal handler)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    @property
    def version(self) -> int:
        return self.policy.version

    def stats(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "requests": self.requests,
            "answered": self.answered,
            "refused": dict(self.refused),
            "batches": self.batches,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "last_inference_ms": round(self.last_inference_ms, 2),
        }

    # --- the deploy endpoint's hooks (hot-swap thread) -----------------------------------------
    def _load(self, deployment: Deployment) -> LeRobotChunkPolicy:
        newest = self._newest
        features = self._features_for(newest[2]) if newest is not None else {}
        return LeRobotChunkPolicy(deployment.path, features, [], deployment.version, self.device)

    def _newest_observation(self) -> tuple[dict[str, Any] | None, str]:
        newest = self._newest
        return (None, "") if newest is None else (newest[0], newest[1])

    # --- the serving thread --------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            socket = self._ctx.socket(zmq.ROUTER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES + MAX_ARRAY_BYTES)
            secure_server(socket, self.address, self._security)
            socket.bind(self.address)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        next_stats = time.monotonic() + self.stats_every_s
        try:
            while not self._stop.is_set():
                if self.stats_every_s > 0 and time.monotonic() >= next_stats:
                    log.info("policy server: %s", self.stats())
                    next_stats = time.monotonic() + self.stats_every_s
                self._adopt_deployed()
                if not self._backlog and not socket.poll(timeout=50):
                    continue
                self._read(socket)
                if self.batch_wait_s > 0 and self._backlog:
                    deadline = time.monotonic() + self.batch_wait_s
                    while len(self._arms_waiting()) < self.max_batch:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or not socket.poll(timeout=max(1, int(remaining * 1000))):
                            break
                        self._read(socket)
                batch = self._next_batch(socket)
                if batch:
                    self._compute(socket, batch)
        finally:
            socket.close()

    def _adopt_deployed(self) -> None:
        taken = None if self.hotswap is None else self.hotswap.take()
        if taken is not None:
            self.policy = taken[0]  # type: ignore[assignment]  (the loader makes LeRobotChunkPolicy)
            log.info("policy v%04d serves from now on", taken[1].version)

    def _read(self, socket: zmq.Socket) -> None:
        """The requests waiting in the socket (at most a few batches' worth per round, so a flood
        cannot starve the computing), decoded; a malformed one is answered at once."""
        for _ in range(4 * self.max_batch + 16):
            try:
                identity, *frames = socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # an empty multipart, nothing to answer
                continue
            self.requests += 1
            try:
                request = InferenceRequest.from_message(decode(frames))
            except Exception as e:  # whatever a peer sends, the server lives on
                reason = str(e) if isinstance(e, ProtocolError) else f"{type(e).__name__}: {e}"
                self._refuse(socket, identity, _request_id_of(frames), "malformed", reason)
                continue
            self._backlog.append(_Pending(identity, request, time.monotonic()))

    def _arms_waiting(self) -> set[str]:
        return {p.request.arm for p in self._backlog}

    def _next_batch(self, socket: zmq.Socket) -> list[_Pending]:
        """Up to max_batch requests, one per arm (its newest), none that outlived its budget."""
        newest: dict[str, _Pending] = {}
        for pending in self._backlog:
            key = pending.request.arm  # a reconnected arm (new socket identity) is the same arm
            older = newest.get(key)
            if older is not None:
                self._refuse(
                    socket,
                    older.identity,
                    older.request.request_id,
                    "superseded",
                    f"superseded by request {pending.request.request_id} of arm {pending.request.arm!r}",
                )
            newest[key] = pending
        now = time.monotonic()
        batch, rest = [], deque()
        for pending in newest.values():  # in arrival order of each arm's newest request
            waited_ms = (now - pending.received_at) * 1000
            budget = pending.request.budget_ms
            if budget > 0 and waited_ms > budget:
                self._refuse(
                    socket,
                    pending.identity,
                    pending.request.request_id,
                    "expired",
                    f"expired: waited {waited_ms:.0f} ms in the server's queue, budget_ms {budget:g}",
                )
            elif len(batch) < self.max_batch:
                batch.append(pending)
            else:
                rest.append(pending)
        self._backlog = rest
        return batch

    def _compute(self, socket: zmq.Socket, batch: list[_Pending]) -> None:
        newest = batch[-1].request
        self._newest = (dict(newest.observation), newest.task, newest.layout())
        for layout, group in self._calls(batch):
            policy = self.policy
            try:
                policy.features = self._features_for(layout)
                start = time.perf_counter()
                chunks = self._predict(policy, [p.request for p in group])
                elapsed_ms = (time.perf_counter() - start) * 1000
                if chunks.ndim != 3 or len(chunks) != len(group) or not np.all(np.isfinite(chunks)):
                    raise ValueError(
                        f"policy chunks: shape {chunks.shape}, finite={np.isfinite(chunks).all()}"
                    )
            except Exception as e:  # a failing call is answered with the reason; the server lives on
                log.exception("inference failed for a batch of %d", len(group))
                for pending in group:
                    self._refuse(socket, pending.identity, pending.request.request_id, "failed", repr(e))
                continue
            self.batches += 1
            self.batch_sizes[len(group)] += 1
            self.last_inference_ms = elapsed_ms
            for pending, chunk in zip(group, chunks, strict=True):
                reply = ActionChunk(pending.request.request_id, chunk, policy.version, elapsed_ms, len(group))
                socket.send_multipart([pending.identity, *encode(reply.to_message())])
                self.answered += 1

    @staticmethod
    def _calls(batch: list[_Pending]) -> list[tuple[tuple, list[_Pending]]]:
        """The policy calls a batch takes: one per observation layout and, for requests with an RTC
        prefix, per (delay, prefix length): LeRobot's RTC guides a whole call with one inference delay
        and cuts its horizon to the prefix's length, so only prefixes alike in both share a call."""
        calls: dict[tuple, list[_Pending]] = {}
        for pending in batch:
            request = pending.request
            rtc = (
                None
                if request.prefix_actions is None
                else (request.prefix_delay, len(request.prefix_actions))
            )
            calls.setdefault((request.layout(), rtc), []).append(pending)
        return [(layout, group) for (layout, _), group in calls.items()]

    def _predict(self, policy: LeRobotChunkPolicy, requests: list[InferenceRequest]) -> np.ndarray:
        """One batched call (`predict_chunks`), with the rows' RTC prefixes if they have them (a
        policy that cannot chunk in real time ignores them, as in the daemon)."""
        import torch

        if self.seed is not None:
            torch.manual_seed(self.seed)
        observations = [dict(r.observation) for r in requests]
        tasks = [r.task for r in requests]
        prefixes = None
        if requests[0].prefix_actions is not None:
            prefixes = [Prefix(r.prefix_actions, int(r.prefix_delay or 0)) for r in requests]
        return np.asarray(policy.predict_chunks(observations, tasks, prefixes), dtype=np.float32)

    def _features_for(self, layout: tuple) -> dict:
        features = self._features.get(layout)
        if features is None:
            names, cameras = layout
            observed: dict[str, Any] = {name: float for name in names}
            observed.update({camera: shape for camera, shape, _ in cameras})
            features = self._features[layout] = dataset_features(observed, {}, use_videos=False)
        return features

    def _refuse(self, socket: zmq.Socket, identity: bytes, request_id: int, why: str, reason: str) -> None:
        self.refused[why] += 1
        if why != "superseded":
            log.warning("inference request %d refused: %s", request_id, reason)
        socket.send_multipart([identity, *encode(InferenceError(request_id, reason).to_message())])


def _request_id_of(frames: list[bytes]) -> int:
    """The request id of a request that failed to decode, when it can be read at all (else -1)."""
    try:
        value = decode(frames).fields.get("request_id")
    except Exception:
        return -1
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1


def _action_dim(policy: LeRobotChunkPolicy) -> int:
    return int(policy.policy.config.output_features["action"].shape[0])


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_server(cfg, ctx: zmq.Context | None = None) -> PolicyServer:
    """The server `flywheel serve` runs (cfg: ServeConfig), loaded and not yet started."""
    if cfg.registry is not None:
        registry = ModelRegistry(cfg.registry)
        version = cfg.version or registry.latest()
        if version is None:
            raise FileNotFoundError(f"registry: no versions in {cfg.registry}")
        path = registry.path(version)
        registry.manifest(version)  # FileNotFoundError naming the version when it is absent
        if not registry.verify(version):
            raise ValueError(
                f"registry: v{version:04d}'s {WEIGHTS_FILE} does not match its manifest's sha256"
            )
    else:
        path = Path(cfg.policy.path)
        version = resolved_version(PolicySourceConfig(path=path, version=cfg.policy.version))
    if cfg.policy.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.policy.torch_threads)
    device = resolve_device(cfg.policy.device)
    policy = LeRobotChunkPolicy(path, {}, [], version, device)
    deployment = None
    if (path / WEIGHTS_FILE).exists():
        deployment = Deployment(version, path, sha256_file(path / WEIGHTS_FILE))
    return PolicyServer(
        policy,
        deployment,
        cfg.wire.address,
        cfg.wire.deploy or None,
        cfg.wire.security(),
        max_batch=cfg.max_batch,
        batch_wait_s=cfg.batch_wait_ms / 1000,
        seed=cfg.seed,
        device=device,
        ctx=ctx,
        stats_every_s=cfg.stats_every_s,
    )
