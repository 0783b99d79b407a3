"""The teleop process (`flywheel teleop`): reads the operator's device and the pedal and publishes
them to the rollout daemon as TELEOP_STATE messages (docs/protocol.md).

It also listens to the daemon's observations: a simulated operator and pedal need them to act, and
each new observation is answered at once (with its frame number), which lets a daemon running in
lockstep (fps=0) wait for exactly that answer. Without observations it publishes at `fps`.

With `mirror`, a leader arm with torque follows the follower's observed joints while the pedal is
up (teleop/mirror.py), so a takeover starts where the follower is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import zmq
from lerobot.teleoperators.config import TeleoperatorConfig
from lerobot.teleoperators.utils import make_teleoperator_from_config

from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import Observation, TeleopState
from flywheel.contracts.protocol import LatestValueSubscriber, MessageType, ProtocolError, Publisher
from teleop.mirror import LeaderMirror
from teleop.pedals import ConstantPedalConfig, PedalConfig, make_pedal

log = logging.getLogger(__name__)


@dataclass
class TeleopProcessConfig:
    """The teleop process: reads the operator device and the pedal, publishes them to the daemon."""

    teleop: TeleoperatorConfig | None = None
    pedal: PedalConfig | None = None
    wire: WireConfig = field(default_factory=WireConfig)
    # Publish rate in Hz when no observation arrives (keep it at or above the control rate).
    fps: int = 60
    # Leader arms with torque (SO-100/Koch leaders on a Feetech/Dynamixel bus): while the policy
    # drives, the leader is driven to follow the follower, so a takeover starts aligned; on pedal
    # down its torque goes off and the operator moves it; on pedal up torque comes back on and it
    # follows again. Motors the device holds with torque itself (Koch's gripper trigger) are left alone.
    mirror: bool = False
    # In mirror mode, the largest change of the leader's goal per observation, in LeRobot's units of
    # the leader (SO-100: degrees, gripper 0-100; Koch: -100..100): the leader never snaps to the
    # follower when the mirror engages far from it. None: no limit.
    mirror_max_step: float | None = 5.0

    def __post_init__(self):
        if self.mirror_max_step is not None and self.mirror_max_step <= 0:
            raise ValueError(f"mirror_max_step: {self.mirror_max_step} must be > 0")


def run_teleop(cfg: TeleopProcessConfig, stop: threading.Event | None = None) -> None:
    if cfg.teleop is None:
        raise ValueError(
            "teleop: no operator device given; use --teleop.type=sim_operator or so100_leader ..."
        )
    stop = stop or threading.Event()
    teleoperator = make_teleoperator_from_config(cfg.teleop)
    # Refused before anything connects: mirror mode on a device without a motor bus.
    mirror = LeaderMirror(teleoperator, cfg.teleop.type, cfg.mirror_max_step) if cfg.mirror else None
    pedal = make_pedal(cfg.pedal or ConstantPedalConfig(pressed=False))
    ctx = zmq.Context.instance()
    new_observation = threading.Event()
    security = cfg.wire.security("teleop")
    observations = LatestValueSubscriber(
        ctx,
        [cfg.wire.daemon_events],
        [MessageType.OBSERVATION],
        on_message=lambda _: new_observation.set(),
        security=security,
    )
    publisher = Publisher(ctx, cfg.wire.teleop_state, security)
    names = list(teleoperator.action_features)
    teleoperator.connect()
    if mirror is not None:
        mirror.start()
    pedal.connect()
    observations.start()
    log.info(
        "teleop: %s with a %s pedal, publishing on %s",
        cfg.teleop.type,
        pedal.__class__.__name__,
        cfg.wire.teleop_state,
    )
    # A simulated operator acts once per observation it sees (its noise and delays are per frame);
    # a real device is read on every loop.
    observing = hasattr(teleoperator, "observe")
    view: Observation | None = None
    action = dict.fromkeys(names, 0.0)
    try:
        while not stop.is_set():
            fresh = new_observation.wait(timeout=1.0 / cfg.fps)
            new_observation.clear()
            newest, age_s = _newest_view(observations) if fresh else (None, 0.0)
            if newest is not None:
                view = newest
                if observing:
                    teleoperator.observe(view)
                    action = teleoperator.get_action()
            reading = pedal.read(view)
            if mirror is not None and reading.keys.get("estop", 0) > 0:  # counted since connect
                mirror.stop()  # the daemon stops and disables the follower's torque: so does the leader
            if mirror is not None:
                # Before the device is read: on pedal down the torque is off before the operator's
                # first action is published, so the operator never fights the servos.
                mirror.update(reading.pressed, newest, age_s)
            if not observing:
                action = teleoperator.get_action()
            publisher.send(
                TeleopState(
                    episode=view.episode if view else -1,
                    frame=view.frame if view else -1,
                    pressed=reading.pressed,
                    keys=reading.keys,
                    names=tuple(names),
                    action=np.array([action[n] for n in names], dtype=np.float32),
                )
            )
    finally:
        observations.stop()
        publisher.close()
        pedal.disconnect()
        if mirror is not None and teleoperator.is_connected:
            _release(mirror)
        teleoperator.disconnect()


def _release(mirror: LeaderMirror) -> None:
    """Leave the leader limp, whatever ended the loop (LeRobot's disconnect disables torque too)."""
    try:
        mirror.release()
    except Exception:
        log.exception("mirror: could not turn the leader's torque off")


def _newest_view(observations: LatestValueSubscriber) -> tuple[Observation | None, float]:
    """The newest observation and how long ago it arrived (seconds)."""
    received = observations.latest(MessageType.OBSERVATION)
    if received is None:
        return None, 0.0
    try:
        return Observation.from_message(received.message), time.monotonic() - received.received_at
    except ProtocolError as e:
        log.warning("ignored an observation: %s", e)
        return None, 0.0
