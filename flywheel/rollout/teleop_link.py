"""How the daemon hears the operator: from the teleop process over ZeroMQ, or in-process.

Both give a `TeleopSnapshot` per tick. In lockstep (fps=0), the remote link waits for the teleop
process's answer to this very observation, so a simulated run is exact however fast it goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import zmq
from lerobot.teleoperators.teleoperator import Teleoperator

from flywheel.contracts.protocol import LatestValueSubscriber, MessageType
from flywheel.contracts.security import Security
from teleop.observation import ObservationView
from teleop.pedals import EPISODE_KEYS, Pedal


@dataclass
class TeleopSnapshot:
    pressed: bool
    action: dict[str, float] | None  # None: no operator action known
    keys: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EPISODE_KEYS, 0))
    age_s: float = 0.0  # how old the newest teleop state is


class LocalTeleop:
    """The operator device and pedal in the daemon's own process (lockstep, or `flywheel record`)."""

    def __init__(self, teleoperator: Teleoperator, pedal: Pedal):
        self.teleoperator, self.pedal = teleoperator, pedal

    def start(self) -> None:
        self.teleoperator.connect()
        self.pedal.connect()

    def poll(self, view: ObservationView, wait: bool) -> TeleopSnapshot:
        # As in the teleop process: the operator looks at, and acts on, every observation.
        if hasattr(self.teleoperator, "observe"):
            self.teleoperator.observe(view)
        reading = self.pedal.read(view)
        return TeleopSnapshot(reading.pressed, self.teleoperator.get_action(), reading.keys)

    def stop(self) -> None:
        self.pedal.disconnect()
        if self.teleoperator.is_connected:
            self.teleoperator.disconnect()


class RemoteTeleop:
    """The newest TELEOP_STATE from `flywheel teleop` (latest-value semantics)."""

    def __init__(
        self, ctx: zmq.Context, address: str, lockstep_timeout_s: float, security: Security | None = None
    ):
        self._sub = LatestValueSubscriber(
            ctx, [address], [MessageType.TELEOP_STATE], security=security, server="teleop"
        )
        self.lockstep_timeout_s = lockstep_timeout_s
        self.lockstep_timeouts = 0

    @property
    def rejected(self) -> int:
        return self._sub.rejected

    def start(self) -> None:
        self._sub.start()

    def heard(self) -> bool:
        return self._sub.latest(MessageType.TELEOP_STATE) is not None

    def poll(self, view: ObservationView, wait: bool) -> TeleopSnapshot:
        received = self._sub.latest(MessageType.TELEOP_STATE)
        answered = True
        if wait:
            deadline = time.monotonic() + self.lockstep_timeout_s
            while not _answers(received, view) and time.monotonic() < deadline:
                time.sleep(0.0001)
                received = self._sub.latest(MessageType.TELEOP_STATE)
            answered = _answers(received, view)
            self.lockstep_timeouts += not answered
        if received is None:
            return TeleopSnapshot(pressed=False, action=None, age_s=float("inf"))
        msg = received.message
        names = msg.fields.get("names") or []
        action_array = msg.arrays.get("action")
        action = None
        if action_array is not None and len(names) == len(action_array) and np.all(np.isfinite(action_array)):
            action = dict(zip(names, action_array.astype(float).tolist(), strict=True))
        keys = {k: int(v) for k, v in (msg.fields.get("keys") or {}).items() if k in EPISODE_KEYS}
        return TeleopSnapshot(
            bool(msg.fields.get("pressed")),
            action,
            keys or dict.fromkeys(EPISODE_KEYS, 0),
            # An answer to an older observation counts as stale: the daemon holds instead.
            time.monotonic() - received.received_at if answered else float("inf"),
        )

    def stop(self) -> None:
        self._sub.stop()


def _answers(received, view: ObservationView) -> bool:
    if received is None:
        return False
    f = received.message.fields
    return f.get("episode") == view.episode and isinstance(f.get("frame"), int) and f["frame"] >= view.frame
