"""Runs a chunk policy beside the control loop.

The loop pops one action per tick from a queue (each action with the version of the policy that
computed it, which the frame records). When the queue runs low, the newest observation is
handed to a worker thread that computes the next chunk; when that chunk arrives, the actions for
ticks that passed while it was being computed are dropped, so the robot continues from where it is
now. In lockstep (fps=0) the loop waits for the chunk instead, which keeps the sim deterministic.

Real-time chunking (rtc, real time only): each request carries a Prefix, the queued actions not yet
executed when it is made (row i for tick asked_at + i, the same tick as the new chunk's row i) and
the delay, ceil(latency / period) ticks (at least 1: this tick's action already comes from the
queue), where latency is the 95th percentile of the last chunks' measured latencies (request to
result, LeRobot's LatencyTracker). A request with an empty queue (an episode's first chunk, after a
takeover or a restart) carries none.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from flywheel.rollout.policy_source import ChunkPolicy, Prefix

log = logging.getLogger(__name__)


class PolicyRunner:
    def __init__(
        self,
        policy: ChunkPolicy,
        refill_at: int,
        blocking: bool,
        max_wait_s: float = 0.0,
        rtc: bool = False,
        period_s: float = 0.0,
        latency_window: int = 20,
    ):
        """max_wait_s: in real time, how long a tick may wait for a chunk being computed when the
        queue is empty (at an episode start, after a takeover): a fraction of the period, so the
        tick stays on time and the robot holds only when inference is really late.
        rtc: hand each request a Prefix (real time only: ignored in lockstep or without period_s,
        the control period); latency_window: how many recent chunks' latencies the delay reads."""
        from lerobot.policies.rtc.latency_tracker import LatencyTracker

        self.policy = policy
        self.refill_at = refill_at
        self.blocking = blocking
        self.max_wait_s = max_wait_s
        self.rtc = rtc and not blocking and period_s > 0
        self.period_s = period_s
        self.latency = LatencyTracker(maxlen=latency_window)  # seconds, request to result
        self.chunks_started = 0  # chunks whose first action was handed out (benchmarks read it)
        self._fresh = False  # the queue holds a chunk none of whose actions was handed out yet
        self._queue: deque[tuple[np.ndarray, int]] = deque()
        self._cond = threading.Condition()
        # generation, obs, task, tick, prefix actions (rtc), when asked (time.monotonic)
        self._request: tuple[int, dict[str, Any], str, int, np.ndarray | None, float] | None = None
        self._result: tuple[int, np.ndarray, int, int] | None = None  # generation, chunk, tick, version
        self._in_flight = False
        self._generation = 0
        self._refill_now = False
        self._stop = False
        self.misses = 0  # ticks on which no policy action was ready (the loop held position)
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._work, name="policy-worker", daemon=True)
        self._thread.start()

    def restart(self) -> None:
        """Forget queued actions and any chunk being computed: the next action comes from a fresh
        chunk computed on the current observation (after a takeover, or at an episode start)."""
        with self._cond:
            self._generation += 1
            self._queue.clear()
            self._result = None
            self._fresh = False
        self.policy.reset()

    def swap(self, policy: ChunkPolicy) -> None:
        """Act with another policy from now on (control thread, between ticks). In real time the
        queued actions of the old one bridge the ticks until the new one's first chunk arrives, so
        the robot never waits; in lockstep the new one acts from this very tick."""
        with self._cond:
            self.policy = policy
            self._generation += 1  # a chunk the old policy is still computing is dropped
            self._result = None
            self._refill_now = True
            self.latency.reset()  # another model, maybe another latency
            if self.blocking:
                self._queue.clear()

    def next_action(self, observation: dict[str, Any], task: str, tick: int) -> tuple[np.ndarray, int] | None:
        """The action for this tick and the version of the policy that computed it."""
        with self._cond:
            self._take_result(tick)
            # Lockstep asks only when the queue is empty and waits, so a chunk always starts on the
            # observation it was computed from: the same seeds give the same run.
            low = not self._queue if self.blocking else len(self._queue) <= self.refill_at
            low = low or self._refill_now
            if low and not self._in_flight:
                # Before this tick's action is popped: row 0 of the prefix is this tick's action.
                queued = np.stack([a for a, _ in self._queue]) if self.rtc and self._queue else None
                self._request = (self._generation, observation, task, tick, queued, time.monotonic())
                self._in_flight = True
                self._refill_now = False
                self._cond.notify_all()
            if not self._queue:
                deadline = None if self.blocking else time.monotonic() + self.max_wait_s
                while self._in_flight and not self._stop:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._cond.wait(timeout=remaining)
                self._take_result(tick)
            if not self._queue:
                self.misses += 1
                return None
            if self._fresh:
                self.chunks_started += 1
                self._fresh = False
            return self._queue.popleft()

    def _take_result(self, tick: int) -> None:
        if self._result is None:
            return
        generation, chunk, asked_at, version = self._result
        self._result = None
        if generation != self._generation:
            return
        stale = max(0, tick - asked_at)
        self._queue = deque((action, version) for action in chunk[stale:])
        self._fresh = bool(self._queue)

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                generation, observation, task, tick, queued, asked = self._request
                self._request = None
                policy = self.policy
                prefix = None if queued is None else Prefix(queued, self.delay_ticks())
            try:
                if prefix is None:
                    chunk = policy.predict_chunk(observation, task)
                else:
                    chunk = policy.predict_chunk(observation, task, prefix)
                chunk = np.asarray(chunk, dtype=np.float32)
                if chunk.ndim != 2 or not np.all(np.isfinite(chunk)):
                    raise ValueError(f"policy chunk: shape {chunk.shape}, finite={np.isfinite(chunk).all()}")
            except Exception as e:  # a failing policy must not take the loop down: it holds instead
                self.errors += 1
                self.last_error = repr(e)
                if isinstance(e, TimeoutError | ConnectionError):
                    # A policy server not answering: the remote policy says so once per outage, not
                    # with a traceback on every tick it holds.
                    log.debug("policy inference: %r", e)
                else:
                    log.exception("policy inference failed")
                chunk = None
            with self._cond:
                if chunk is not None:
                    if generation == self._generation:  # not a swapped-out policy's latency
                        self.latency.add(time.monotonic() - asked)
                    self._result = (generation, chunk, tick, policy.version)
                self._in_flight = False
                self._cond.notify_all()

    def delay_ticks(self) -> int:
        """RTC's inference delay: the ticks from a request to the first tick its chunk can act on,
        from the recent latencies (1 before any was measured)."""
        latency = self.latency.p95() if len(self.latency) else 0.0
        return max(1, math.ceil(latency / self.period_s - 1e-9))

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
