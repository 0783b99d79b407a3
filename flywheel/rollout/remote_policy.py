"""The daemon's policy when the model runs on a policy server (`--policy.server=ADDRESS`, `flywheel serve`).

`RemoteChunkPolicy` is a ChunkPolicy like any other: the PolicyRunner's worker thread calls
`predict_chunk`, which sends the observation (and the RTC prefix, when given) over one DEALER socket
and waits for the chunk, at most the chunk's own duration (after that every action of it would be
stale). It sets `version` from the reply before returning, so the frames the chunk acts on record
the version that computed it. No answer in time, or no server to send to, raises
`PolicyServerUnavailable` (a TimeoutError): the runner counts an error, the tick holds, the queued
actions of the previous chunk run out on their own ticks and nothing is replayed after its time.
It logs "not answering; holding" once per outage and "answering again" when a chunk comes back.
A reply to a request it gave up on (its request id is not the one awaited) is discarded.

The round trip of every answered request is kept (`rtt_stats()`, `latency_s`): the measured
inference delay, network included, that real-time chunking needs.
"""

from __future__ import annotations

import logging
import os
import socket as _socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from flywheel.contracts.protocol import MAX_ARRAY_BYTES, MAX_HEADER_BYTES, ProtocolError, decode, encode
from flywheel.contracts.security import Security, secure_client
from flywheel.contracts.serving import ActionChunk, InferenceError, InferenceRequest, decode_reply

if TYPE_CHECKING:
    from flywheel.rollout.policy_source import Prefix

log = logging.getLogger(__name__)

SERVER_KEY = "policy_server"  # the server's key name in keys_dir/public (flywheel.serve's default identity)
UNKNOWN_VERSION = -1  # `version` before the first answer (never recorded: only answered chunks act)


class PolicyServerUnavailable(TimeoutError):
    """No answer from the policy server in time (slow, unreachable, or gone)."""


class PolicyServerRefused(RuntimeError):
    """The server answered with an error instead of a chunk (its reason names the field or failure)."""


class RemoteChunkPolicy:
    def __init__(
        self,
        address: str,
        action_names: list[str],
        fps: float = 30.0,
        arm: str | None = None,
        security: Security | None = None,
        server_key: str = SERVER_KEY,
        first_timeout_s: float = 5.0,
        lockstep_timeout_s: float = 10.0,
        min_timeout_s: float = 0.05,
        ctx: zmq.Context | None = None,
    ):
        """fps: the control rate (0: lockstep), which turns a chunk's length into its duration.
        first_timeout_s: the wait before any chunk's length is known (a cold server's first
        inference). arm: this arm's name on the server (default host-pid)."""
        self.address, self.action_names, self.fps = address, list(action_names), fps
        self.arm = arm or f"{_socket.gethostname()}-{os.getpid()}"
        self.first_timeout_s, self.lockstep_timeout_s = first_timeout_s, lockstep_timeout_s
        self.min_timeout_s = min_timeout_s
        self.version = UNKNOWN_VERSION
        self._security, self._server_key = security, server_key
        self._ctx = ctx or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._steps: int | None = None  # length of the last chunk answered
        self._answering: bool | None = None  # None: not asked yet
        self._rtt_ms: deque[float] = deque(maxlen=1000)
        self._server_ms: deque[float] = deque(maxlen=1000)
        self.answered = 0
        self.failures = 0  # requests given up on (timeout, unreachable)
        self.outages = 0
        self.discarded = 0  # late replies to abandoned requests
        self.last_batch_size = 0

    # --- ChunkPolicy -----------------------------------------------------------------------------
    def predict_chunk(
        self, observation: dict[str, Any], task: str, prefix: Prefix | None = None
    ) -> np.ndarray:
        with self._lock:
            return self._exchange(observation, task, prefix)

    def connect(self, wait_s: float = 0.0) -> bool:
        """Open the connection now rather than with the first request: TCP's, ZeroMQ's and CURVE's
        handshakes take several round trips (1.2 s at 100 ms each way, benchmarks/remote.py), which
        the first chunk would otherwise wait through, and RTC's latency estimate would count. With
        `wait_s`, wait up to that long for the handshakes to complete; True once they have."""
        with self._lock:
            socket = self._connect()
            # IMMEDIATE: the socket is writable only once a connection is established and greeted.
            return bool(socket.poll(timeout=int(wait_s * 1000), flags=zmq.POLLOUT))

    def reset(self) -> None:
        """Nothing to reset on the server: each request carries all it needs (a LeRobot policy's
        reset clears only select_action's queue, which chunk inference does not use)."""

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    # --- measurements ------------------------------------------------------------------------------
    def timeout_s(self) -> float:
        """How long a request is waited for: the duration of the last chunk (once its length is known)."""
        if self.fps <= 0:
            return self.lockstep_timeout_s
        if self._steps is None:
            return self.first_timeout_s
        return max(self.min_timeout_s, self._steps / self.fps)

    @property
    def latency_s(self) -> float | None:
        """The newest measured round trip (request sent to chunk received), in seconds."""
        return self._rtt_ms[-1] / 1000 if self._rtt_ms else None

    def rtt_stats(self) -> dict[str, float]:
        """Round trips (ms) of the last answered requests: last, p50, p95; and the server's own share."""
        if not self._rtt_ms:
            return {"n": 0}
        rtt, server = np.array(self._rtt_ms), np.array(self._server_ms)
        return {
            "n": len(rtt),
            "last_ms": float(rtt[-1]),
            "p50_ms": float(np.percentile(rtt, 50)),
            "p95_ms": float(np.percentile(rtt, 95)),
            "server_p50_ms": float(np.percentile(server, 50)),
        }

    # --- one exchange (worker thread) --------------------------------------------------------------
    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a live connection: nothing stale on reconnect
            s.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES + MAX_ARRAY_BYTES)
            s.setsockopt(zmq.SNDHWM, 4)
            s.setsockopt(zmq.RCVHWM, 16)
            s.setsockopt(zmq.RECONNECT_IVL, 100)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            s.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # a silently dead peer is dropped after 3 s
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            secure_client(s, self._security, self._server_key)
            s.connect(self.address)
            self._socket = s
        return self._socket

    def _exchange(self, observation: dict[str, Any], task: str, prefix: Prefix | None) -> np.ndarray:
        timeout_s = self.timeout_s()
        self._next_id += 1
        request_id = self._next_id
        request = InferenceRequest(
            self.arm,
            request_id,
            task,
            observation,
            None if prefix is None else np.asarray(prefix.actions, dtype=np.float32),
            None if prefix is None else int(prefix.delay),
            budget_ms=timeout_s * 1000,
        )
        frames = encode(request.to_message())
        socket = self._connect()
        start = time.perf_counter()
        deadline = start + timeout_s
        # Without a connection (server down, restarting) there is nobody to send to: wait for one.
        if not socket.poll(timeout=_ms_until(deadline), flags=zmq.POLLOUT):
            self._unavailable(f"no connection within {timeout_s * 1000:.0f} ms")
        try:
            socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._unavailable("the connection went away while sending")
        sent = time.perf_counter()  # the round trip: from here (not the wait for a connection)
        while True:
            if not socket.poll(timeout=_ms_until(deadline), flags=zmq.POLLIN):
                self._unavailable(f"no answer within {timeout_s * 1000:.0f} ms")
            try:
                reply = decode_reply(decode(socket.recv_multipart(flags=zmq.NOBLOCK)))
            except zmq.Again:
                continue
            except ProtocolError as e:
                raise PolicyServerRefused(f"policy server {self.address}: malformed reply: {e}") from None
            if reply.request_id != request_id:
                self.discarded += 1  # the answer to a request this arm already gave up on
                continue
            break
        rtt_ms = (time.perf_counter() - sent) * 1000
        self._answered_again()
        if isinstance(reply, InferenceError):
            raise PolicyServerRefused(f"policy server {self.address}: {reply.reason}")
        return self._accept(reply, rtt_ms)

    def _accept(self, reply: ActionChunk, rtt_ms: float) -> np.ndarray:
        chunk = reply.chunk
        if chunk.shape[1] != len(self.action_names):
            raise PolicyServerRefused(
                f"policy server {self.address}: chunk of {chunk.shape[1]} actions per step, this robot "
                f"has {len(self.action_names)} ({self.action_names})"
            )
        self._rtt_ms.append(rtt_ms)
        self._server_ms.append(reply.inference_ms)
        self._steps = len(chunk)
        self.last_batch_size = reply.batch_size
        self.answered += 1
        self.version = reply.version  # before returning: the runner reads it right after
        return chunk

    def _unavailable(self, why: str) -> None:
        self.failures += 1
        if self._answering is not False:
            self.outages += 1
            log.warning("policy server %s not answering; holding (%s)", self.address, why)
        self._answering = False
        raise PolicyServerUnavailable(f"policy server {self.address}: {why}")

    def _answered_again(self) -> None:
        if self._answering is False:
            log.warning("policy server %s answering again", self.address)
        self._answering = True


def _ms_until(deadline: float) -> int:
    return max(0, int((deadline - time.perf_counter()) * 1000))
