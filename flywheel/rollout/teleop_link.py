"""How the daemon hears the operator: from the teleop process over ZeroMQ, or in-process.

Both give a `TeleopSnapshot` per tick. In lockstep (fps=0), the remote link waits for the teleop
process's answer to this very observation, so a simulated run is exact however fast it goes.

`TeleopLink` is what the daemon needs of a link. LocalTeleop and RemoteTeleop subclass it; another
link (a test's scripted one) may too, to inherit the defaults of an in-process link.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import zmq
from lerobot.teleoperators.teleoperator import Teleoperator

from flywheel.contracts.messages import EPISODE_KEYS, Observation, TeleopState
from flywheel.contracts.protocol import LatestValueSubscriber, MessageType, ProtocolError
from flywheel.contracts.security import Security
from teleop.pedals import Pedal


@dataclass
class TeleopSnapshot:
    pressed: bool
    action: dict[str, float] | None  # None: no operator action known
    keys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EPISODE_KEYS, 0))
    age_s: float = 0.0  # how old the newest teleop state is


class TeleopLink(Protocol):
    """The operator's side as the daemon's control loop sees it. The defaults are an in-process
    link's: always heard, nothing on a wire to reject or to time out."""

    # The operator's side is another process: the daemon waits (teleop_wait_s) to hear it before the
    # first episode, and then for its subscription to the observations.
    remote: bool = False
    rejected: int = 0  # malformed teleop messages so far
    lockstep_timeouts: int = 0  # lockstep ticks whose answer did not come in time

    def start(self) -> None: ...

    def poll(self, view: Observation, wait: bool) -> TeleopSnapshot:
        """The operator's state answering `view`; with `wait` (lockstep), wait for that answer."""
        ...

    def stop(self) -> None: ...

    def heard(self) -> bool:
        """Whether the operator's side has said anything yet."""
        return True


class LocalTeleop(TeleopLink):
    """The operator device and pedal in the daemon's own process (lockstep, or `flywheel record`)."""

    def __init__(self, teleoperator: Teleoperator, pedal: Pedal):
        self.teleoperator, self.pedal = teleoperator, pedal

    def start(self) -> None:
        self.teleoperator.connect()
        self.pedal.connect()

    def poll(self, view: Observation, wait: bool) -> TeleopSnapshot:
        # As in the teleop process: the operator looks at, and acts on, every observation.
        if hasattr(self.teleoperator, "observe"):
            self.teleoperator.observe(view)
        reading = self.pedal.read(view)
        return TeleopSnapshot(reading.pressed, self.teleoperator.get_action(), reading.keys)

    def stop(self) -> None:
        self.pedal.disconnect()
        if self.teleoperator.is_connected:
            self.teleoperator.disconnect()


class RemoteTeleop(TeleopLink):
    """The newest TELEOP_STATE from `flywheel teleop` (latest-value semantics)."""

    remote = True

    def __init__(
        self, ctx: zmq.Context, address: str, lockstep_timeout_s: float, security: Security | None = None
    ):
        self._sub = LatestValueSubscriber(
            ctx, [address], [MessageType.TELEOP_STATE], security=security, server="teleop"
        )
        self.lockstep_timeout_s = lockstep_timeout_s
        self.lockstep_timeouts = 0
        self._undecodable = 0  # framed correctly, but not a TELEOP_STATE payload
        self._last_undecodable = None  # counted once, however many ticks it stays the newest

    @property
    def rejected(self) -> int:
        return self._sub.rejected + self._undecodable

    def start(self) -> None:
        self._sub.start()

    def heard(self) -> bool:
        return self._sub.latest(MessageType.TELEOP_STATE) is not None

    def poll(self, view: Observation, wait: bool) -> TeleopSnapshot:
        received = self._sub.latest(MessageType.TELEOP_STATE)
        answered = True
        if wait:
            deadline = time.monotonic() + self.lockstep_timeout_s
            while not _answers(received, view) and time.monotonic() < deadline:
                time.sleep(0.0001)
                received = self._sub.latest(MessageType.TELEOP_STATE)
            answered = _answers(received, view)
            self.lockstep_timeouts += not answered
        state = None
        if received is not None:
            try:
                state = TeleopState.from_message(received.message)
            except ProtocolError:
                if received.message is not self._last_undecodable:
                    self._undecodable += 1
                    self._last_undecodable = received.message
        if state is None:
            return TeleopSnapshot(pressed=False, action=None, age_s=float("inf"))
        return TeleopSnapshot(
            state.pressed,
            state.action_by_name(),
            dict(state.keys) or dict.fromkeys(EPISODE_KEYS, 0),
            # An answer to an older observation counts as stale: the daemon holds instead.
            time.monotonic() - received.received_at if answered else float("inf"),
        )

    def stop(self) -> None:
        self._sub.stop()


def _answers(received, view: Observation) -> bool:
    if received is None:
        return False
    episode, frame = TeleopState.answering(received.message)
    return episode == view.episode and frame >= view.frame
