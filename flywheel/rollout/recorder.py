"""Writes episodes into the dataset on a thread of its own, so the control loop never waits for
disk (LeRobot's save_episode takes about 100 ms, three control periods at 30 Hz).

The control thread only enqueues the daemon's ticks (raw observations and actions). The last frame is
held back by one, because `next.reward` and `next.done` of a frame are known only when the next one
arrives or the episode ends.

`Recorder` and `NullRecorder` are sinks of the daemon (`flywheel.contracts.ticks.TickSink`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.feature_utils import build_dataset_frame

from flywheel.contracts.dataset import DONE, INTERVENTION, POLICY_VERSION, REWARD, EpisodeInfo, save_episode
from flywheel.contracts.ticks import EpisodeEnd, Tick

log = logging.getLogger(__name__)


@dataclass
class SavedEpisode:
    episode_index: int
    length: int
    info: EpisodeInfo


class Recorder:
    def __init__(self, dataset: LeRobotDataset, on_saved: Callable[[SavedEpisode], None] | None = None):
        self.dataset = dataset
        self.on_saved = on_saved
        self._queue: queue.Queue = queue.Queue()
        self._pending: Tick | None = None
        self.outcomes: list[bool] = []  # one per end_episode, in order: was it saved?
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    # --- control thread side (the sink): never blocks --------------------------------------------
    def start_episode(self, episode: int, task: str) -> None:
        pass  # LeRobot opens the episode buffer with the first frame

    def tick(self, tick: Tick) -> None:
        self._queue.put(("frame", tick))

    def end_episode(self, end: EpisodeEnd) -> None:
        """Save the episode with `end.info`, or drop it (`end.info` None: a discarded attempt)."""
        if end.info is None:
            self._queue.put(("discard", None))
        else:
            self._queue.put(("end", end.info))

    def policy_swapped(self, version: int, frame: int) -> None:
        pass  # every frame carries its policy version

    def close(self, timeout: float = 60.0) -> None:
        """Finish writing what is queued, then stop."""
        self._queue.put(("stop", None))
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.error("recorder did not finish within %.0f s", timeout)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    # --- recorder thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            ending = kind == "end"
            try:
                if kind == "frame":
                    self._flush_pending(done=False, success=False)
                    self._pending = item
                elif kind == "end":
                    self._end(item)
                    self.outcomes.append(True)
                elif kind == "discard":
                    self._pending = None
                    self.dataset.clear_episode_buffer()
                elif kind == "stop":
                    return
            except Exception as e:  # keep the daemon alive; the episode is lost, not the dataset
                self.error = e
                log.exception("recording failed; the current episode is dropped")
                self._pending = None
                self.dataset.clear_episode_buffer()
                if ending:
                    self.outcomes.append(False)

    def _flush_pending(self, done: bool, success: bool) -> None:
        frame, self._pending = self._pending, None
        if frame is None:
            return
        row = build_dataset_frame(self.dataset.features, frame.observation, prefix="observation")
        row["action"] = frame.action.astype(np.float32)
        row[INTERVENTION] = np.array([frame.intervention])
        row[POLICY_VERSION] = np.array([frame.policy_version], dtype=np.int64)
        row[REWARD] = np.array([1.0 if (done and success) else 0.0], dtype=np.float32)
        row[DONE] = np.array([done])
        row["task"] = frame.task
        self.dataset.add_frame(row)

    def _end(self, info: EpisodeInfo) -> None:
        self._flush_pending(done=True, success=info.success)
        if not self.dataset.has_pending_frames():
            raise ValueError("episode: ended with no frames; nothing to save")
        buffer = self.dataset.writer.episode_buffer  # lerobot 0.6: the buffer is the DatasetWriter's
        length, index = buffer["size"], buffer["episode_index"]
        save_episode(self.dataset, info)
        saved = SavedEpisode(index, length, info)
        log.info("saved episode %d: %d frames, %s, success=%s", index, length, info.data_type, info.success)
        if self.on_saved is not None:
            self.on_saved(saved)


class NullRecorder:
    """Records nothing (dataset.record=false): the same calls, no thread, no disk. Every episode
    reports as not saved."""

    error = None

    def __init__(self):
        self.outcomes: list[bool] = []

    def start_episode(self, episode: int, task: str) -> None:
        pass

    def tick(self, tick: Tick) -> None:
        pass

    def end_episode(self, end: EpisodeEnd) -> None:
        if end.info is not None:
            self.outcomes.append(False)

    def policy_swapped(self, version: int, frame: int) -> None:
        pass

    def close(self, timeout: float = 0.0) -> None:
        pass
