"""Hot-swapping policy weights into the running daemon.

A DEPLOY request (docs/protocol.md) names a version, its folder and the sha256 of its weights. On a
thread of its own, the daemon checks the candidate (hash; tensor names and shapes against the
weights now acting; every value finite), loads it into a standby policy and runs one inference on
the newest observation. Only then is it offered to the control thread, which adopts it between two
ticks. Anything wrong is refused with the reason, and the current policy keeps acting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq
from safetensors import safe_open

from flywheel.contracts.messages import DeployReply, DeployRequest
from flywheel.contracts.protocol import decode, encode
from flywheel.contracts.registry import WEIGHTS_FILE, sha256_file
from flywheel.contracts.security import Security, secure_server
from flywheel.rollout.policy_source import ChunkPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    version: int
    path: Path  # a LeRobot pretrained_model folder
    sha256: str

    @classmethod
    def of(cls, request: DeployRequest) -> Deployment:
        """The candidate a decoded (so validated) non-rollback DEPLOY request names."""
        assert request.version is not None and request.path is not None and request.sha256 is not None
        return cls(request.version, request.path, request.sha256)


class CandidateRejected(ValueError):
    pass


def check_weights(candidate: Deployment, reference: Path | None) -> None:
    """Hash, names and shapes (against `reference`, the weights now acting), finite values."""
    weights = candidate.path / WEIGHTS_FILE
    if not weights.exists():
        raise CandidateRejected(f"deploy.path: {candidate.path} has no {WEIGHTS_FILE}")
    actual = sha256_file(weights)
    if actual != candidate.sha256:
        raise CandidateRejected(f"deploy.sha256: {candidate.sha256} announced, the file hashes to {actual}")
    try:
        shapes = _shapes(weights)
    except Exception as e:  # a truncated or corrupted file fails here, not in the control loop
        raise CandidateRejected(f"{WEIGHTS_FILE}: unreadable ({e})") from None
    if reference is not None:
        expected = _shapes(reference / WEIGHTS_FILE)
        if shapes != expected:
            diff = sorted(set(shapes.items()) ^ set(expected.items()))[:3]
            raise CandidateRejected(
                f"{WEIGHTS_FILE}: names or shapes differ from the acting weights, e.g. {diff}"
            )
    with safe_open(weights, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118  (safe_open is not a dict)
            tensor = f.get_tensor(name)
            if tensor.is_floating_point() and not all_finite(tensor):
                raise CandidateRejected(f"{WEIGHTS_FILE}: tensor {name!r} has non-finite values")


# Exponent bits of the 16-bit floats: all ones means infinity or NaN.
_EXPONENT_MASK = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def all_finite(tensor: torch.Tensor) -> bool:
    """No inf or NaN. For 16-bit floats (a pi05 checkpoint in bf16 is about 6.7 GB) by their exponent
    bits, which took a quarter of torch.isfinite's time on a bf16 tensor here (0.17 s against 0.61 s
    per 256 MiB): isfinite was most of a large deploy's validation (docs/benchmarks.md, "Fleet")."""
    mask = _EXPONENT_MASK.get(tensor.dtype)
    if mask is None:
        return bool(torch.isfinite(tensor).all())
    return not bool(((tensor.view(torch.int16) & mask) == mask).any())


def _shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(weights, framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def smoke_test(policy: ChunkPolicy, observation: dict[str, Any] | None, task: str, action_dim: int) -> None:
    if observation is None:
        return  # nothing seen yet: the first tick's own inference is the test
    chunk = np.asarray(policy.predict_chunk(observation, task))
    if chunk.ndim != 2 or chunk.shape[1] != action_dim or len(chunk) == 0:
        raise CandidateRejected(f"smoke inference: chunk shape {chunk.shape}, expected (n, {action_dim})")
    if not np.all(np.isfinite(chunk)):
        raise CandidateRejected("smoke inference: the chunk has non-finite actions")


class HotSwap:
    """The daemon's deploy endpoint (REP socket) and the standby slot the control thread reads."""

    def __init__(
        self,
        ctx: zmq.Context,
        address: str,
        load: Callable[[Deployment], ChunkPolicy],
        observe: Callable[[], tuple[dict[str, Any] | None, str]],
        action_dim: int,
        current: Deployment | None,
        swap_wait_s: float = 10.0,
        security: Security | None = None,
    ):
        self._ctx, self._address, self._load, self._observe = ctx, address, load, observe
        self._security = security
        self._action_dim, self._swap_wait_s = action_dim, swap_wait_s
        self.history: list[Deployment] = [current] if current else []
        self._standby: tuple[ChunkPolicy, Deployment, bool] | None = None  # policy, what, is a rollback
        self._swapped = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.rejected = 0
        self._thread = threading.Thread(target=self._serve, name="hotswap", daemon=True)

    def start(self) -> HotSwap:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    @property
    def has_standby(self) -> bool:
        """Whether a validated policy is waiting to be taken (any thread)."""
        with self._lock:
            return self._standby is not None

    # --- control thread ------------------------------------------------------------------------
    def take(self) -> tuple[ChunkPolicy, Deployment] | None:
        """The validated standby policy, if one is waiting (called between ticks)."""
        with self._lock:
            standby, self._standby = self._standby, None
        if standby is None:
            return None
        policy, deployment, rollback = standby
        if rollback:
            self.history.pop()  # back to the one before: a second rollback goes further back
        else:
            self.history.append(deployment)
        self._swapped.set()
        return policy, deployment

    # --- hot-swap thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        socket = self._ctx.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        secure_server(socket, self._address, self._security)
        socket.bind(self._address)
        try:
            while not self._stop.is_set():
                if not socket.poll(timeout=100):
                    continue
                reply = self._handle(socket.recv_multipart())
                socket.send_multipart(encode(reply.to_message()))
        finally:
            socket.close()

    def _handle(self, frames: list[bytes]) -> DeployReply:
        try:
            request = DeployRequest.from_message(decode(frames))
            rollback = request.rollback
            candidate = self._rollback_target() if rollback else Deployment.of(request)
            self._prepare(candidate, rollback)
        except (ValueError, OSError) as e:  # ProtocolError and CandidateRejected are ValueErrors
            self.rejected += 1
            log.warning("deploy refused: %s", e)
            return DeployReply("rejected", self._acting_version(), reason=str(e))
        except Exception as e:  # a loader crash is a refusal too, never the daemon's end
            self.rejected += 1
            log.exception("deploy failed while loading")
            return DeployReply("rejected", self._acting_version(), reason=f"load failed: {e!r}")
        swapped = self._swapped.wait(timeout=self._swap_wait_s)
        status = "swapped" if swapped else "queued"  # queued: swaps at the next tick (between episodes now)
        log.info("deploy v%04d: %s", candidate.version, status)
        return DeployReply(status, self._acting_version(), version=candidate.version)

    def _rollback_target(self) -> Deployment:
        if len(self.history) < 2:
            raise CandidateRejected("rollback: no earlier version was deployed in this daemon's life")
        return self.history[-2]

    def _prepare(self, candidate: Deployment, rollback: bool) -> None:
        reference = self.history[-1].path if self.history else None
        check_weights(candidate, reference)
        policy = self._load(candidate)
        observation, task = self._observe()
        smoke_test(policy, observation, task, self._action_dim)
        self._swapped.clear()
        with self._lock:
            self._standby = (policy, candidate, rollback)

    def _acting_version(self) -> int | None:
        return self.history[-1].version if self.history else None
