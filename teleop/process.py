"""The teleop process (`flywheel teleop`): reads the operator's device and the pedal and publishes
them to the rollout daemon as TELEOP_STATE messages (docs/protocol.md).

It also listens to the daemon's observations: a simulated operator and pedal need them to act, and
each new observation is answered at once (with its frame number), which lets a daemon running in
lockstep (fps=0) wait for exactly that answer. Without observations it publishes at `fps`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import zmq
from lerobot.teleoperators.config import TeleoperatorConfig
from lerobot.teleoperators.utils import make_teleoperator_from_config

from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import Observation, TeleopState
from flywheel.contracts.protocol import LatestValueSubscriber, MessageType, ProtocolError, Publisher
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


def run_teleop(cfg: TeleopProcessConfig, stop: threading.Event | None = None) -> None:
    if cfg.teleop is None:
        raise ValueError(
            "teleop: no operator device given; use --teleop.type=sim_operator or so100_leader ..."
        )
    stop = stop or threading.Event()
    teleoperator = make_teleoperator_from_config(cfg.teleop)
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
            newest = _newest_view(observations) if fresh else None
            if newest is not None:
                view = newest
                if observing:
                    teleoperator.observe(view)
                    action = teleoperator.get_action()
            if not observing:
                action = teleoperator.get_action()
            reading = pedal.read(view)
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
        teleoperator.disconnect()


def _newest_view(observations: LatestValueSubscriber) -> Observation | None:
    received = observations.latest(MessageType.OBSERVATION)
    if received is None:
        return None
    try:
        return Observation.from_message(received.message)
    except ProtocolError as e:
        log.warning("ignored an observation: %s", e)
        return None
