"""RerunLogger: the rollout daemon's live view, fed from the control thread without ever blocking it.

The control thread only appends a tuple to a bounded deque (a few microseconds, no lock held by
anyone for long: `deque.append` and `len` are atomic under the GIL). A logging thread turns the
tuples into Rerun calls. When the deque is full, ticks are dropped and counted (`dropped`); episode
events are kept even then, because they are rare and the outcome text matters more than a frame.

The logger is one of the rollout daemon's sinks: it implements `flywheel.contracts.ticks.TickSink`
(`start_episode`, `tick`, `end_episode`, `policy_swapped`, `close`). The protocol and its records
live in the contracts so that this module, below the daemon in the layers, never imports
`flywheel.rollout`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import rerun as rr

from flywheel.contracts.ticks import EpisodeEnd, Tick
from flywheel.viz import paths as p
from flywheel.viz.blueprint import make_blueprint
from flywheel.viz.config import RerunConfig
from flywheel.viz.sinks import Recording, open_recording
from flywheel.viz.value_monitor import ValueFn, ValueMonitor, load_value_fn, thresholds_for

log = logging.getLogger(__name__)

_IDLE_S = 0.005  # the logging thread's poll period when idle: 1/6 of a 30 Hz tick


def split_features(observation_features: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(scalar names, camera names) of a LeRobot robot's observation_features."""
    scalars = [k for k, v in observation_features.items() if v is float]
    cameras = [k for k, v in observation_features.items() if isinstance(v, tuple) and len(v) == 3]
    return scalars, cameras


def log_styles(stream: rr.RecordingStream, state_names: list[str], action_names: list[str]) -> None:
    """Static series names and colours, so policy and operator lines read apart at a glance."""
    stream.log(p.STATE, rr.SeriesLines(names=state_names), static=True)
    for source in p.SOURCES:
        for name in action_names:
            line = rr.SeriesLines(colors=[p.COLORS[source]], names=f"{source} {name}")
            stream.log(f"{p.ACTION}/{source}/{name}", line, static=True)
    styles = {
        p.INTERVENTION: rr.SeriesLines(colors=[p.COLORS["operator"]], names="intervention", widths=2.0),
        p.PEDAL: rr.SeriesLines(colors=[p.COLORS["pedal"]], names="pedal"),
        p.POLICY_VERSION: rr.SeriesLines(colors=[p.COLORS["version"]], names="policy version"),
        p.EPISODE: rr.SeriesLines(colors=[p.COLORS["threshold"]], names="episode"),
        p.VALUE: rr.SeriesLines(colors=[p.COLORS["value"]], names="V(s)", widths=2.0),
        p.ADVANTAGE: rr.SeriesLines(colors=[p.COLORS["advantage"]], names="advantage"),
        p.THRESHOLD: rr.SeriesLines(colors=[p.COLORS["threshold"]], names="threshold"),
        p.POSITIVE: rr.SeriesPoints(colors=[p.COLORS["positive"]], names="positive", marker_sizes=2.0),
        p.NEGATIVE: rr.SeriesPoints(colors=[p.COLORS["negative"]], names="negative", marker_sizes=2.0),
        p.VALUE_INTERVENTION: rr.SeriesPoints(
            colors=[p.COLORS["operator"]], names="operator in control", marker_sizes=2.0
        ),
    }
    for path, style in styles.items():
        stream.log(path, style, static=True)


class RerunLogger:
    """Live Rerun view of a rollout. Control-thread methods never block and never raise."""

    def __init__(
        self,
        recording: Recording,
        state_names: list[str],
        camera_names: list[str],
        action_names: list[str],
        queue_size: int = 512,
        image_every: int = 1,
        value_monitor: ValueMonitor | None = None,
        value_every: int = 5,
        jpeg_quality: int = 0,
        start: bool = True,
    ):
        self.recording = recording
        self.stream = recording.stream
        self.state_names = state_names
        self.camera_names = camera_names
        self.action_names = action_names
        self.queue_size = queue_size
        self.image_every = image_every
        self.value_monitor = value_monitor
        self.value_every = value_every
        self.jpeg_quality = jpeg_quality
        self.dropped = 0  # ticks dropped because the queue was full
        self.logged = 0  # ticks the logging thread wrote
        self.errors = 0
        self._queue: deque[tuple] = deque()
        self._ticks = 0  # global tick counter (the `frame` timeline), counted on the control thread
        self._closed = False
        self._task = ""
        self._last_intervention = False
        self._last_source = "policy"
        self._thread = threading.Thread(target=self._run, name="rerun-logger", daemon=True)
        log_styles(self.stream, state_names, action_names)
        if start:
            self.start()

    @classmethod
    def from_config(
        cls,
        cfg: RerunConfig,
        observation_features: Mapping[str, Any],
        action_names: list[str],
        value_fn: ValueFn | None = None,
    ) -> RerunLogger:
        """Opens the sinks of `cfg`; `value_fn` replaces the model at `cfg.value_path` (tests)."""
        state_names, camera_names = split_features(observation_features)
        recording = open_recording(cfg, make_blueprint(list(action_names), camera_names))
        if value_fn is None and cfg.value_path is not None:
            value_fn = load_value_fn(cfg.value_path, state_names)
        monitor = None
        if value_fn is not None:
            thresholds = thresholds_for(cfg.value_path) if cfg.value_path else None
            monitor = ValueMonitor(
                recording.stream,
                value_fn,
                cfg.value_n_step,
                cfg.value_episode_steps,
                cfg.value_failure_penalty,
                thresholds,
            ).start()
        return cls(
            recording,
            state_names,
            camera_names,
            list(action_names),
            cfg.queue_size,
            cfg.image_every,
            monitor,
            cfg.value_every,
            cfg.jpeg_quality,
        )

    def start(self) -> None:
        self._thread.start()

    # --- control thread: O(1), non-blocking ---------------------------------------------------------
    def start_episode(self, episode: int, task: str) -> None:
        self._put(("start", self._ticks, time.time(), episode, task), event=True)

    def tick(self, tick: Tick) -> None:
        """One control tick. `tick.observation` and `tick.action` are kept by reference: do not
        mutate them."""
        index = self._ticks
        self._ticks += 1
        item = ("tick", index, time.time(), tick.episode, tick.frame, tick.observation, tick.action)
        self._put((*item, tick.source, tick.intervention, tick.policy_version, tick.pedal), event=False)

    def end_episode(self, end: EpisodeEnd) -> None:
        item = ("end", self._ticks - 1, time.time(), end.episode, end.success, end.data_type, end.end_reason)
        self._put(item, event=True)

    def policy_swapped(self, version: int, frame: int) -> None:
        self._put(("swap", self._ticks, time.time(), version, frame), event=True)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, finish the value monitor, flush the sinks. Call once, at shutdown."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self.value_monitor is not None:
            self.value_monitor.close(timeout_s)
        self.recording.close()
        if self.dropped:
            log.warning("rerun: %d ticks dropped (logging fell behind the control loop)", self.dropped)

    def _put(self, item: tuple, event: bool) -> None:
        if self._closed:
            return
        if not event and len(self._queue) >= self.queue_size:
            self.dropped += 1
            return
        self._queue.append(item)

    # --- logging thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.popleft()
            except IndexError:
                if self._closed:
                    return
                time.sleep(_IDLE_S)
                continue
            try:
                self._handle(item)
            except Exception:  # one bad observation must not end the live view
                self.errors += 1
                if self.errors == 1:
                    log.exception("rerun: logging failed")

    def _handle(self, item: tuple) -> None:
        kind, tick, wall_time = item[:3]
        self.stream.set_time(p.FRAME, sequence=tick)
        self.stream.set_time(p.WALL_TIME, timestamp=wall_time)
        if kind == "tick":
            self._tick(tick, wall_time, *item[3:])
        elif kind == "start":
            self._start(*item[3:], tick)
        elif kind == "end":
            self._end(tick, *item[3:])
        elif kind == "swap":
            version, frame = item[3:]
            self._event(f"policy v{version:04d} acts from frame {frame}", "INFO")

    def _tick(
        self,
        tick: int,
        wall_time: float,
        episode: int,
        frame: int,
        observation: dict[str, Any],
        action: np.ndarray,
        source: str,
        intervention: bool,
        policy_version: int,
        pedal: bool,
    ) -> None:
        s = self.stream
        state = np.array([observation.get(n, np.nan) for n in self.state_names], dtype=np.float64)
        s.log(p.STATE, rr.Scalars(state))
        if tick % self.image_every == 0:
            for cam in self.camera_names:
                if cam in observation:
                    s.log(f"{p.CAMERA}/{cam}", self._image(observation[cam]))
        source = source if source in p.SOURCES else "policy"
        if source != self._last_source:
            self._break_lines(self._last_source)
            self._last_source = source
        for name, value in zip(
            self.action_names, np.asarray(action, dtype=np.float64).tolist(), strict=False
        ):
            s.log(f"{p.ACTION}/{source}/{name}", rr.Scalars(value))
        s.log(p.INTERVENTION, rr.Scalars(float(intervention)))
        s.log(p.PEDAL, rr.Scalars(float(pedal)))
        s.log(p.POLICY_VERSION, rr.Scalars(float(policy_version)))
        s.log(p.EPISODE, rr.Scalars(float(episode)))
        if intervention != self._last_intervention:
            resumed = "policy resumes" if source == "policy" else f"{source} acts"  # hold: stale operator
            what = "operator takes over" if intervention else resumed
            self._event(f"episode {episode} frame {frame}: {what}", "WARN" if intervention else "INFO")
            self._last_intervention = intervention
        if self.value_monitor is not None and frame % self.value_every == 0:
            self.value_monitor.offer(episode, tick, wall_time, observation, self._task)
        self.logged += 1

    def _start(self, episode: int, task: str, tick: int) -> None:
        self._task = task
        self._last_intervention = False
        self._event(f"episode {episode} starts: {task}", "INFO")

    def _end(
        self, last_tick: int, episode: int, success: bool, data_type: str | None, end_reason: str
    ) -> None:
        kept = f"saved as {data_type}" if data_type else "discarded"
        outcome = "success" if success else "failure"
        self._event(
            f"episode {episode} ends: {outcome} ({end_reason}), {kept}", "INFO" if success else "WARN"
        )
        if self.value_monitor is not None:
            self.value_monitor.end_episode(episode, success, last_tick)

    def _image(self, pixels: np.ndarray) -> rr.Image | rr.EncodedImage:
        image = rr.Image(pixels)
        return image.compress(jpeg_quality=self.jpeg_quality) if self.jpeg_quality else image

    def _break_lines(self, source: str) -> None:
        """End `source`'s action lines here, so the plot shows a gap while another source acts
        instead of a straight line across the operator's span (a Clear breaks a series line)."""
        for name in self.action_names:
            self.stream.log(f"{p.ACTION}/{source}/{name}", rr.Clear(recursive=False))

    def _event(self, text: str, level: str) -> None:
        self.stream.log(p.EVENTS, rr.TextLog(text, level=level))
