"""V(s) and an N-step advantage estimate, live, on a thread of their own.

The value model can be slow (a VLM takes ~100 ms), so it never runs on the control thread or the
logging thread: they `offer` the newest observation into a one-slot mailbox and go on. The monitor
evaluates whatever is newest when it is free, so it runs at `value_every` ticks at most and slower
when the model is slow; older offers are overwritten, never queued.

Advantage, in the labeling's normalized units (flywheel/recap/advantages.py):
    A_f = sum_{k<N} r_{f+k} / T_max + V(o_{f+N}) - V(o_f),   r = -1 per step
It is known only N ticks later, so A_f is logged at frame f once an evaluation at or after f+N
exists (using the true gap), and at the episode's end with the terminal reward (0 on success,
-C_fail on failure) and no bootstrap for the frames still open.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rerun as rr

from flywheel.contracts.dataset import LABELS_FILE
from flywheel.viz import paths as p

log = logging.getLogger(__name__)

# (observation, task) -> V(o) in normalized-return units
ValueFn = Callable[[Mapping[str, Any], str], float]


@dataclass
class _Offer:
    episode: int
    frame: int  # global tick
    wall_time: float
    observation: Mapping[str, Any]
    task: str


@dataclass
class _Open:
    frame: int
    wall_time: float
    value: float


@dataclass
class _Episode:
    index: int
    task: str
    open: list[_Open] = field(default_factory=list)  # evaluated frames whose advantage is not known yet


class Thresholds:
    """The labeling's binarization threshold for a (task, V) pair, from meta/recap_labels.json."""

    def __init__(self, per_task: Mapping[str, Mapping[str, Any]]):
        self.per_task = per_task

    @classmethod
    def from_labels(cls, labels_json: Path) -> Thresholds | None:
        if not labels_json.exists():
            return None
        report = json.loads(labels_json.read_text())
        return cls(report.get("thresholds", {}).get("per_task", {}))

    def __call__(self, task: str, value: float) -> float | None:
        info = self.per_task.get(task) or (next(iter(self.per_task.values())) if self.per_task else None)
        if not info:
            return None
        if "threshold" in info:  # global mode: one per task
            return float(info["threshold"])
        edges = np.asarray(info["value_bin_edges"])  # progress mode: one per V-quantile bin
        return float(info["thresholds"][int(np.searchsorted(edges, value, side="right"))])


class ValueMonitor:
    def __init__(
        self,
        stream: rr.RecordingStream,
        value_fn: ValueFn,
        n_step: int = 50,
        episode_steps: int = 600,
        failure_penalty: float = 0.5,
        thresholds: Thresholds | None = None,
    ):
        self.stream = stream
        self.value_fn = value_fn
        self.n_step = n_step
        self.t_max = float(episode_steps)
        self.failure_penalty = failure_penalty
        self.thresholds = thresholds
        self.evaluations = 0
        self.errors = 0
        self._cond = threading.Condition()
        self._offer: _Offer | None = None
        self._ends: list[tuple[int, bool, int]] = []  # (episode, success, last global frame)
        self._episode: _Episode | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="value-monitor", daemon=True)

    def start(self) -> ValueMonitor:
        self._thread.start()
        return self

    # --- called from the logging thread: never waits for the model -------------------------------
    def offer(
        self, episode: int, frame: int, wall_time: float, observation: Mapping[str, Any], task: str
    ) -> None:
        with self._cond:
            self._offer = _Offer(episode, frame, wall_time, observation, task)
            self._cond.notify()

    def end_episode(self, episode: int, success: bool, last_frame: int) -> None:
        with self._cond:
            self._ends.append((episode, success, last_frame))
            self._cond.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Evaluate what is pending, close open episodes' advantages, stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- the monitor's thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while self._offer is None and not self._ends and not self._stopping:
                    self._cond.wait()
                offer, ends, stopping = self._offer, self._ends, self._stopping
                self._offer, self._ends = None, []
            # An offer of episode e was made before e's end (the logging thread keeps tick order).
            if offer is not None and (not ends or offer.episode <= ends[0][0]):
                self._evaluate(offer)
                offer = None
            for episode, success, last_frame in ends:
                self._finish(episode, success, last_frame)
            if offer is not None:
                self._evaluate(offer)
            if stopping and self._offer is None and not self._ends:
                return

    def _evaluate(self, offer: _Offer) -> None:
        if self._episode is None or self._episode.index != offer.episode:
            self._episode = _Episode(offer.episode, offer.task)
        try:
            value = float(self.value_fn(offer.observation, offer.task))
        except Exception as e:  # a failing model must not take the logger down; count and say once
            self.errors += 1
            if self.errors == 1:
                log.exception("value monitor: V(s) failed: %s", e)
            return
        self.evaluations += 1
        self._set_time(offer.frame, offer.wall_time)
        self.stream.log(p.VALUE, rr.Scalars(value))
        episode = self._episode
        ready = [o for o in episode.open if offer.frame - o.frame >= self.n_step]
        episode.open = [o for o in episode.open if offer.frame - o.frame < self.n_step]
        for o in ready:
            gap = offer.frame - o.frame
            self._log_advantage(o, -gap / self.t_max + value - o.value)
        episode.open.append(_Open(offer.frame, offer.wall_time, value))

    def _finish(self, episode: int, success: bool, last_frame: int) -> None:
        """The episode ended: the open frames' rewards run to its end, with no bootstrap."""
        if self._episode is None or self._episode.index != episode:
            return
        terminal = 0.0 if success else -self.failure_penalty * self.t_max
        for o in self._episode.open:
            rewards = -(last_frame - o.frame) + terminal  # -1 per step, then the last step's reward
            self._log_advantage(o, rewards / self.t_max - o.value)
        self._episode = None

    def _log_advantage(self, at: _Open, advantage: float) -> None:
        self._set_time(at.frame, at.wall_time)
        self.stream.log(p.ADVANTAGE, rr.Scalars(advantage))
        threshold = self.thresholds(self._episode.task, at.value) if self.thresholds else None
        if threshold is not None:
            self.stream.log(p.THRESHOLD, rr.Scalars(threshold))
            self.stream.log(p.POSITIVE if advantage > threshold else p.NEGATIVE, rr.Scalars(advantage))

    def _set_time(self, frame: int, wall_time: float) -> None:
        # Time is per thread in Rerun, so this does not disturb the logging thread's.
        self.stream.set_time(p.FRAME, sequence=frame)
        self.stream.set_time(p.WALL_TIME, timestamp=wall_time)


def load_value_fn(path: Path, state_names: list[str]) -> ValueFn:
    """V(o) from a trained `recap_value` model (<labeled root>/meta/recap_value).

    `state_names` are the robot's scalar observation features in their order, which is the order of
    `observation.state` in the dataset the model was trained on."""
    import torch

    from flywheel.recap.source import STATE
    from flywheel.recap.train_value import load_value_model

    fitted = load_value_model(Path(path))
    fitted.policy.eval()
    cameras = {key: key.removeprefix("observation.images.") for key in fitted.policy.camera_keys}

    @torch.no_grad()
    def value(observation: Mapping[str, Any], task: str) -> float:
        batch: dict[str, Any] = {STATE: torch.tensor([float(observation[n]) for n in state_names])}
        for key, name in cameras.items():  # HxWx3 uint8 -> 3xHxW float in [0, 1], as LeRobot loads them
            batch[key] = torch.from_numpy(np.asarray(observation[name])).permute(2, 0, 1).float() / 255.0
        batch = fitted.preprocessor(batch)
        batch["task"] = [task]
        return float(fitted.policy.predict_value(batch)[0])

    return value


def thresholds_for(value_path: Path) -> Thresholds | None:
    """The thresholds of the labeling that saved `value_path` (<labeled root>/meta/recap_value)."""
    return Thresholds.from_labels(Path(value_path).parent / Path(LABELS_FILE).name)
