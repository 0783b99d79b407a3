"""What an operator sees of the robot: the daemon's OBSERVATION message, decoded.

A real operator looks at the arm; a simulated one reads this. The daemon publishes one per tick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flywheel.contracts.protocol import Message, MessageType, ProtocolError


@dataclass(frozen=True)
class ObservationView:
    episode: int
    frame: int
    task: str
    names: tuple[str, ...]
    state: np.ndarray  # float32, the robot's scalar observation features in `names` order
    sim_task: str = ""  # the MetaWorld task when the robot is the sim, else empty

    def fields(self) -> dict:
        return {
            "episode": self.episode,
            "frame": self.frame,
            "task": self.task,
            "names": list(self.names),
            "sim_task": self.sim_task,
        }

    @classmethod
    def from_message(cls, msg: Message) -> ObservationView:
        if msg.type != MessageType.OBSERVATION:
            raise ProtocolError(f"type: expected {MessageType.OBSERVATION}, got {msg.type}")
        f = msg.fields
        for key, kind in (
            ("episode", int),
            ("frame", int),
            ("task", str),
            ("names", list),
            ("sim_task", str),
        ):
            if not isinstance(f.get(key), kind):
                raise ProtocolError(f"observation.fields.{key}: {f.get(key)!r} is not a {kind.__name__}")
        state = msg.arrays.get("state")
        if state is None or state.ndim != 1 or len(state) != len(f["names"]):
            shape = None if state is None else state.shape
            raise ProtocolError(
                f"observation.arrays.state: shape {shape} does not match {len(f['names'])} names"
            )
        return cls(
            f["episode"], f["frame"], f["task"], tuple(f["names"]), state.astype(np.float32), f["sim_task"]
        )
