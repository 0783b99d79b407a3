"""Runs a chunk policy beside the control loop.

The loop pops one action per tick from a queue. When the queue runs low, the newest observation is
handed to a worker thread that computes the next chunk; when that chunk arrives, the actions for
ticks that passed while it was being computed are dropped, so the robot continues from where it is
now. In lockstep (fps=0) the loop waits for the chunk instead, which keeps the sim deterministic.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

import numpy as np

from flywheel.policy_source import ChunkPolicy

log = logging.getLogger(__name__)


class PolicyRunner:
    def __init__(self, policy: ChunkPolicy, refill_at: int, blocking: bool):
        self.policy = policy
        self.refill_at = refill_at
        self.blocking = blocking
        self._queue: deque[np.ndarray] = deque()
        self._cond = threading.Condition()
        self._request: tuple[int, dict[str, Any], str, int] | None = None  # generation, obs, task, tick
        self._result: tuple[int, np.ndarray, int] | None = None  # generation, chunk, tick
        self._in_flight = False
        self._generation = 0
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
        self.policy.reset()

    def next_action(self, observation: dict[str, Any], task: str, tick: int) -> np.ndarray | None:
        with self._cond:
            self._take_result(tick)
            # Lockstep asks only when the queue is empty and waits, so a chunk always starts on the
            # observation it was computed from: the same seeds give the same run.
            low = not self._queue if self.blocking else len(self._queue) <= self.refill_at
            if low and not self._in_flight:
                self._request = (self._generation, observation, task, tick)
                self._in_flight = True
                self._cond.notify_all()
            if not self._queue and self.blocking:
                while self._in_flight and not self._stop:
                    self._cond.wait()
                self._take_result(tick)
            if not self._queue:
                self.misses += 1
                return None
            return self._queue.popleft()

    def _take_result(self, tick: int) -> None:
        if self._result is None:
            return
        generation, chunk, asked_at = self._result
        self._result = None
        if generation != self._generation:
            return
        stale = max(0, tick - asked_at)
        self._queue = deque(chunk[stale:])

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                generation, observation, task, tick = self._request
                self._request = None
            try:
                chunk = np.asarray(self.policy.predict_chunk(observation, task), dtype=np.float32)
                if chunk.ndim != 2 or not np.all(np.isfinite(chunk)):
                    raise ValueError(f"policy chunk: shape {chunk.shape}, finite={np.isfinite(chunk).all()}")
            except Exception as e:  # a failing policy must not take the loop down: it holds instead
                self.errors += 1
                self.last_error = repr(e)
                log.exception("policy inference failed")
                chunk = None
            with self._cond:
                if chunk is not None:
                    self._result = (generation, chunk, tick)
                self._in_flight = False
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
