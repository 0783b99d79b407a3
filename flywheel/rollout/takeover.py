"""Who drives the robot: the takeover state machine.

Input (the teleop stream's thread, or the loop itself in lockstep) only *requests* a state; the
control loop applies requests at the start of a tick, through the table of allowed transitions.
"""

from __future__ import annotations

import logging
import threading
from enum import StrEnum

log = logging.getLogger(__name__)


class ControlState(StrEnum):
    AUTONOMOUS = "autonomous"  # the policy acts
    INTERVENING = "intervening"  # the operator acts (pedal down); frames tagged intervention=True
    STOPPED = "stopped"  # emergency stop: nothing is sent until the daemon restarts


ALLOWED_TRANSITIONS: dict[ControlState, frozenset[ControlState]] = {
    ControlState.AUTONOMOUS: frozenset({ControlState.INTERVENING, ControlState.STOPPED}),
    ControlState.INTERVENING: frozenset({ControlState.AUTONOMOUS, ControlState.STOPPED}),
    ControlState.STOPPED: frozenset(),
}


class TakeoverMachine:
    def __init__(self, initial: ControlState = ControlState.AUTONOMOUS):
        self.state = initial
        self._requested: ControlState | None = None
        self._lock = threading.Lock()
        self.refused = 0

    def request(self, state: ControlState) -> None:
        """Ask for a state; thread-safe. The newest request wins."""
        with self._lock:
            self._requested = state

    def apply(self) -> tuple[ControlState, ControlState] | None:
        """Apply the pending request (control thread only). Returns (old, new) when it changed."""
        with self._lock:
            requested, self._requested = self._requested, None
        if requested is None or requested == self.state:
            return None
        if requested not in ALLOWED_TRANSITIONS[self.state]:
            self.refused += 1
            log.warning("refused transition %s -> %s", self.state, requested)
            return None
        old, self.state = self.state, requested
        return old, requested

    def reset(self) -> None:
        """A new episode starts autonomous, unless stopped."""
        with self._lock:
            self._requested = None
        if self.state != ControlState.STOPPED:
            self.state = ControlState.AUTONOMOUS
