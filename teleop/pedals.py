"""Pedals: what tells the daemon that the operator takes over.

A pedal is read by the teleop process (or in-process by the daemon in lockstep) once per tick or
per observation and returns a `PedalReading`: whether it is down, and press counters of the episode
keys. Counters instead of events, so a reader that drops stale messages (latest-value semantics)
still sees every press.

Kinds: `sim` (a simulated operator who presses when the policy looks stuck or drifts),
`constant` (always up, or always down for demonstrations), `keyboard` (the terminal: space toggles
the takeover; s success, f failure, r re-record, e emergency stop).
"""

from __future__ import annotations

import abc
import logging
import select
import sys
import termios
import threading
import tty
from dataclasses import dataclass, field

import draccus
import numpy as np

from flywheel.contracts.messages import EPISODE_KEYS, Observation
from robots.sim.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class PedalReading:
    pressed: bool
    keys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EPISODE_KEYS, 0))


@dataclass
class PedalConfig(draccus.ChoiceRegistry, abc.ABC):
    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)


class Pedal(abc.ABC):
    def connect(self) -> None:  # noqa: B027  (most pedals need no set-up)
        pass

    @abc.abstractmethod
    def read(self, view: Observation | None) -> PedalReading:
        """The pedal now; `view` is the newest observation (None if none arrived yet)."""

    def disconnect(self) -> None:  # noqa: B027
        pass


# Which Pedal reads each PedalConfig; each pedal module registers its own with `pedal_for`, so this
# module needs to know none of them (teleop/__init__ imports every pedal module).
PEDALS: dict[type[PedalConfig], type[Pedal]] = {}


def pedal_for(config_type: type[PedalConfig]):
    def register(pedal_type: type[Pedal]) -> type[Pedal]:
        PEDALS[config_type] = pedal_type
        return pedal_type

    return register


@PedalConfig.register_subclass("constant")
@dataclass
class ConstantPedalConfig(PedalConfig):
    # Always down (operator-only demonstrations) or always up (the policy always acts).
    pressed: bool = False


@pedal_for(ConstantPedalConfig)
class ConstantPedal(Pedal):
    def __init__(self, config: ConstantPedalConfig):
        self.reading = PedalReading(pressed=config.pressed)

    def read(self, view: Observation | None) -> PedalReading:
        return self.reading


@PedalConfig.register_subclass("schedule")
@dataclass
class ScheduledPedalConfig(PedalConfig):
    """Down on fixed frames of every episode: scripted takeovers (tests, demos, hardware checks)."""

    # [start, end) frame ranges, e.g. [[10, 40]].
    down: list[list[int]] = field(default_factory=lambda: [[10, 40]])

    def __post_init__(self):
        for span in self.down:
            if len(span) != 2 or not 0 <= span[0] <= span[1]:
                raise ValueError(f"pedal.down: {span} is not a [start, end) frame range")


@pedal_for(ScheduledPedalConfig)
class ScheduledPedal(Pedal):
    def __init__(self, config: ScheduledPedalConfig):
        self.spans = [range(a, b) for a, b in config.down]

    def read(self, view: Observation | None) -> PedalReading:
        return PedalReading(pressed=view is not None and any(view.frame in span for span in self.spans))


@PedalConfig.register_subclass("sim")
@dataclass
class SimPedalConfig(PedalConfig):
    """A simulated operator's foot: presses when progress stalls or goes backwards."""

    # What makes the operator press: stuck (no progress), drift (moving away), stuck_or_drift.
    rule: str = "stuck_or_drift"
    # Progress is judged over this many frames.
    window: int = 20
    # Stuck: the distance still to cover fell by less than this (metres) over the window.
    stuck_threshold: float = 0.01
    # Drift: the distance still to cover grew by more than this (metres) over the window.
    drift_threshold: float = 0.03
    # Chance that the operator notices a triggering frame (a per-frame Bernoulli draw).
    press_probability: float = 0.5
    # No takeover during the first frames of an episode: the policy gets a chance.
    grace_frames: int = 15
    # Release once the distance fell by this fraction since the press (or on success) ...
    recover_fraction: float = 0.5
    # ... but hold at least this many frames ...
    min_hold_frames: int = 10
    # ... and at most this many.
    max_hold_frames: int = 80
    # After a release, wait this many frames before pressing again.
    cooldown_frames: int = 20
    # Seed of the press draws.
    seed: int = 0

    def __post_init__(self):
        if self.rule not in ("stuck", "drift", "stuck_or_drift"):
            raise ValueError(f"pedal.rule: {self.rule!r} is not one of 'stuck', 'drift', 'stuck_or_drift'")
        if not 0.0 <= self.press_probability <= 1.0:
            raise ValueError(f"pedal.press_probability: {self.press_probability} is outside [0, 1]")
        if self.window < 2:
            raise ValueError(f"pedal.window: {self.window} must be >= 2")


@pedal_for(SimPedalConfig)
class SimPedal(Pedal):
    def __init__(self, config: SimPedalConfig):
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        self._episode = -1
        self._reset()

    def _reset(self) -> None:
        self._history: list[float] = []
        self._pressed = False
        self._pressed_at_frame = 0
        self._distance_at_press = 0.0
        self._released_at_frame = -(10**9)
        self._last_frame = -1

    def read(self, view: Observation | None) -> PedalReading:
        if view is None:
            return PedalReading(pressed=False)
        if view.episode != self._episode:
            self._episode = view.episode
            self._reset()
        if view.frame != self._last_frame:  # judge each frame once, whatever the read rate
            self._last_frame = view.frame
            self._step(view)
        return PedalReading(pressed=self._pressed)

    def _step(self, view: Observation) -> None:
        c = self.config
        distance = get_task(view.sim_task, field="observation.sim_task").progress_distance(view.state)
        self._history.append(distance)
        if self._pressed:
            held = view.frame - self._pressed_at_frame
            recovered = distance <= (1.0 - c.recover_fraction) * self._distance_at_press
            if held >= c.max_hold_frames or (held >= c.min_hold_frames and recovered):
                self._pressed = False
                self._released_at_frame = view.frame
            return
        if view.frame < c.grace_frames or view.frame - self._released_at_frame < c.cooldown_frames:
            return
        if len(self._history) <= c.window:
            return
        change = distance - self._history[-1 - c.window]
        stuck = c.rule in ("stuck", "stuck_or_drift") and -c.stuck_threshold < change <= c.drift_threshold
        drift = c.rule in ("drift", "stuck_or_drift") and change > c.drift_threshold
        if (stuck or drift) and self._rng.random() < c.press_probability:
            self._pressed = True
            self._pressed_at_frame = view.frame
            self._distance_at_press = distance


@PedalConfig.register_subclass("keyboard")
@dataclass
class KeyboardPedalConfig(PedalConfig):
    """The terminal as a pedal (a fallback: needs the teleop process's terminal to have focus).

    A terminal sees key presses, not releases, so the takeover key toggles."""

    # Toggles the takeover.
    takeover_key: str = " "
    # Ends the episode as a success.
    success_key: str = "s"
    # Ends the episode as a failure.
    failure_key: str = "f"
    # Discards the episode (it is run again).
    rerecord_key: str = "r"
    # Emergency stop: nothing more is sent; the daemon stops.
    estop_key: str = "e"


@pedal_for(KeyboardPedalConfig)
class KeyboardPedal(Pedal):
    def __init__(self, config: KeyboardPedalConfig):
        self.config = config
        self._reading = PedalReading(pressed=False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_tty = None

    def connect(self) -> None:
        if not sys.stdin.isatty():
            raise RuntimeError("pedal.type=keyboard: standard input is not a terminal")
        self._saved_tty = termios.tcgetattr(sys.stdin)
        tty.setcbreak(sys.stdin)
        self._thread = threading.Thread(target=self._listen, name="keyboard-pedal", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        c = self.config
        keys = {
            c.success_key: "success",
            c.failure_key: "failure",
            c.rerecord_key: "rerecord",
            c.estop_key: "estop",
        }
        while not self._stop.is_set():
            ready, _, _ = select.select([sys.stdin], [], [], 0.05)
            if not ready:
                continue
            char = sys.stdin.read(1)
            with self._lock:
                if char == c.takeover_key:
                    self._reading.pressed = not self._reading.pressed
                elif char in keys:
                    self._reading.keys[keys[char]] += 1

    def read(self, view: Observation | None) -> PedalReading:
        with self._lock:
            return PedalReading(self._reading.pressed, dict(self._reading.keys))

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved_tty is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._saved_tty)


def make_pedal(config: PedalConfig) -> Pedal:
    if type(config) not in PEDALS:
        raise ValueError(f"pedal.type: no pedal for {config.type!r}")
    return PEDALS[type(config)](config)
