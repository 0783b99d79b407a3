"""The policy server's payloads (docs/protocol.md, "Policy server"): observation in, action chunk out.

An arm's daemon (its `RemoteChunkPolicy`, a DEALER socket) sends an `InferenceRequest`; `flywheel
serve` (a ROUTER socket) answers it with an `ActionChunk` or an `InferenceError`, echoing the
request id, so a reply to a request the arm has given up on is recognised and dropped. The framing,
limits and CurveZMQ are those of every other flywheel message (protocol.py, security.py); each class
below checks a received message and raises `ProtocolError` naming the field and the value, like
contracts/messages.py.

    INFERENCE_REQUEST  InferenceRequest  daemon -> server
    ACTION_CHUNK       ActionChunk       server -> daemon
    INFERENCE_ERROR    InferenceError    server -> daemon
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from flywheel.contracts.protocol import Message, MessageType, ProtocolError, expect_type, is_int

STATE = "state"  # the array of the observation's scalar features, in `state_names` order
PREFIX = "prefix"  # the array of RTC prefix actions
IMAGE = "image:"  # + a camera's name: that camera's frame, as the observation dict holds it
IMAGE_DTYPES = ("uint8", "float32")
MAX_NAME = 256  # characters in an arm, camera or feature name


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _name(where: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME or (not value and not allow_empty):
        raise ProtocolError(f"{where}: {str(value)[:80]!r} is not a name (a string of 1..{MAX_NAME})")
    return value


def _request_id(where: str, value: Any, allow_unknown: bool = False) -> int:
    if not is_int(value) or value < (-1 if allow_unknown else 0):
        raise ProtocolError(f"{where}: {value!r} is not a non-negative integer")
    return value


@dataclass(frozen=True, eq=False)
class InferenceRequest:
    """One observation of one arm, to be turned into an action chunk.

    `observation` is the daemon's observation dict (robot.get_observation()): scalar features (joint
    positions) by name, and camera frames (H, W, C arrays) by camera name. On the wire the scalars
    travel as one float32 array `state` with their names in `state_names`, each camera as an array
    `image:<name>`. `prefix_actions`/`prefix_delay` carry real-time chunking's prefix (the actions of
    the previous chunk still to execute, in the robot's action order, and the inference delay in
    ticks); both or neither. `budget_ms`: how long the arm waits for the answer; the server answers
    a request that waited longer than that in its queue with an error instead of computing it."""

    TYPE: ClassVar[MessageType] = MessageType.INFERENCE_REQUEST

    arm: str
    request_id: int
    task: str
    observation: Mapping[str, Any]
    prefix_actions: np.ndarray | None = None  # float32 (n, action_dim)
    prefix_delay: int | None = None
    budget_ms: float = 0.0  # 0: no budget (wait as long as it takes)
    state_names: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self):
        names = tuple(k for k, v in self.observation.items() if not isinstance(v, np.ndarray) or v.ndim == 0)
        object.__setattr__(self, "state_names", names)
        if (self.prefix_actions is None) != (self.prefix_delay is None):
            raise ProtocolError("inference_request.prefix: give prefix_actions and prefix_delay, or neither")

    def to_message(self) -> Message:
        state = np.array([float(self.observation[name]) for name in self.state_names], dtype=np.float32)
        arrays: dict[str, np.ndarray] = {STATE: state}
        for name, value in self.observation.items():
            if name not in self.state_names:
                arrays[IMAGE + name] = np.asarray(value)
        fields: dict[str, Any] = {
            "arm": self.arm,
            "request_id": self.request_id,
            "task": self.task,
            "state_names": list(self.state_names),
            "budget_ms": float(self.budget_ms),
            "prefix_delay": self.prefix_delay,
        }
        if self.prefix_actions is not None:
            arrays[PREFIX] = np.asarray(self.prefix_actions, dtype=np.float32)
        return Message(self.TYPE, fields, arrays)

    @classmethod
    def from_message(cls, msg: Message) -> InferenceRequest:
        expect_type(msg, cls.TYPE)
        f, where = msg.fields, "inference_request.fields"
        arm = _name(f"{where}.arm", f.get("arm"))
        request_id = _request_id(f"{where}.request_id", f.get("request_id"))
        task = f.get("task")
        if not isinstance(task, str):
            raise ProtocolError(f"{where}.task: {task!r} is not a string")
        names = f.get("state_names")
        if not isinstance(names, list):
            raise ProtocolError(f"{where}.state_names: {str(names)[:80]!r} is not a list of names")
        for name in names:
            _name(f"{where}.state_names", name)
        if len(set(names)) != len(names):
            raise ProtocolError(f"{where}.state_names: {names!r} names a feature twice")
        budget = f.get("budget_ms")
        if not _is_number(budget) or budget < 0:
            raise ProtocolError(f"{where}.budget_ms: {budget!r} is not a non-negative number")
        delay = f.get("prefix_delay")
        if delay is not None and (not is_int(delay) or delay < 0):
            raise ProtocolError(f"{where}.prefix_delay: {delay!r} is not a non-negative integer")

        arrays = dict(msg.arrays)
        state = arrays.pop(STATE, None)
        if state is None or state.dtype != np.float32 or state.shape != (len(names),):
            shape = None if state is None else (state.dtype.name, state.shape)
            raise ProtocolError(
                f"inference_request.arrays.state: {shape} is not float32 of shape ({len(names)},)"
            )
        if not np.all(np.isfinite(state)):
            raise ProtocolError("inference_request.arrays.state: holds non-finite values")
        prefix = arrays.pop(PREFIX, None)
        if (prefix is None) != (delay is None):
            raise ProtocolError(
                f"inference_request.prefix: prefix_delay={delay!r} but the prefix array is "
                f"{'absent' if prefix is None else 'present'} (both or neither)"
            )
        if prefix is not None and (
            prefix.dtype != np.float32 or prefix.ndim != 2 or not np.all(np.isfinite(prefix))
        ):
            raise ProtocolError(
                f"inference_request.arrays.prefix: {prefix.dtype.name} {prefix.shape} is not a finite "
                "float32 (n, action_dim) array"
            )
        observation: dict[str, Any] = dict(zip(names, state.astype(float).tolist(), strict=True))
        for key, image in arrays.items():
            if not key.startswith(IMAGE):
                raise ProtocolError(f"inference_request.arrays.{key[:80]}: not state, prefix or image:<name>")
            camera = _name(f"inference_request.arrays.{key[:80]}", key[len(IMAGE) :])
            if camera in observation:
                raise ProtocolError(f"inference_request.arrays.{key}: {camera!r} is also a state name")
            if image.dtype.name not in IMAGE_DTYPES or image.ndim != 3:
                raise ProtocolError(
                    f"inference_request.arrays.{key}: {image.dtype.name} {image.shape} is not an "
                    f"(H, W, C) image of {' or '.join(IMAGE_DTYPES)}"
                )
            observation[camera] = image
        return cls(arm, request_id, task, observation, prefix, delay, float(budget))

    def layout(self) -> tuple:
        """What the observation's features are (names, and each camera's shape and dtype): requests
        of one layout can share a batch."""
        cameras = tuple(
            (k, tuple(v.shape), v.dtype.name)
            for k, v in self.observation.items()
            if k not in self.state_names
        )
        return self.state_names, cameras


@dataclass(frozen=True, eq=False)
class ActionChunk:
    """The server's answer: the chunk (float32 (steps, action_dim), the robot's action order), the
    registry version that computed it, the server's own time for the batch it was in and that
    batch's size (to tell the network's share of the round trip from the model's)."""

    TYPE: ClassVar[MessageType] = MessageType.ACTION_CHUNK

    request_id: int
    chunk: np.ndarray
    version: int
    inference_ms: float
    batch_size: int = 1

    def to_message(self) -> Message:
        fields = {
            "request_id": self.request_id,
            "version": self.version,
            "inference_ms": float(self.inference_ms),
            "batch_size": self.batch_size,
        }
        return Message(self.TYPE, fields, {"chunk": np.asarray(self.chunk, dtype=np.float32)})

    @classmethod
    def from_message(cls, msg: Message) -> ActionChunk:
        expect_type(msg, cls.TYPE)
        f, where = msg.fields, "action_chunk.fields"
        request_id = _request_id(f"{where}.request_id", f.get("request_id"))
        version, ms, batch = f.get("version"), f.get("inference_ms"), f.get("batch_size")
        if not is_int(version):
            raise ProtocolError(f"{where}.version: {version!r} is not an integer")
        if not _is_number(ms) or ms < 0:
            raise ProtocolError(f"{where}.inference_ms: {ms!r} is not a non-negative number")
        if not is_int(batch) or batch < 1:
            raise ProtocolError(f"{where}.batch_size: {batch!r} is not a positive integer")
        chunk = msg.arrays.get("chunk")
        if chunk is None or chunk.dtype != np.float32 or chunk.ndim != 2 or 0 in chunk.shape:
            shape = None if chunk is None else (chunk.dtype.name, chunk.shape)
            raise ProtocolError(f"action_chunk.arrays.chunk: {shape} is not float32 (steps, action_dim)")
        if not np.all(np.isfinite(chunk)):
            raise ProtocolError("action_chunk.arrays.chunk: holds non-finite actions")
        return cls(request_id, chunk, version, float(ms), batch)


@dataclass(frozen=True)
class InferenceError:
    """The request was not computed: `reason` names the field and value, or what failed.
    `request_id` is -1 when the request could not even be read."""

    TYPE: ClassVar[MessageType] = MessageType.INFERENCE_ERROR

    request_id: int
    reason: str

    def to_message(self) -> Message:
        return Message(self.TYPE, {"request_id": self.request_id, "reason": self.reason[:4000]})

    @classmethod
    def from_message(cls, msg: Message) -> InferenceError:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        request_id = _request_id("inference_error.fields.request_id", f.get("request_id"), allow_unknown=True)
        reason = f.get("reason")
        if not isinstance(reason, str):
            raise ProtocolError(f"inference_error.fields.reason: {reason!r} is not a string")
        return cls(request_id, reason)


def decode_reply(msg: Message) -> ActionChunk | InferenceError:
    """The server's answer, whichever of the two it is (ProtocolError for anything else)."""
    if msg.type == MessageType.ACTION_CHUNK:
        return ActionChunk.from_message(msg)
    if msg.type == MessageType.INFERENCE_ERROR:
        return InferenceError.from_message(msg)
    raise ProtocolError(
        f"type: expected {MessageType.ACTION_CHUNK} or {MessageType.INFERENCE_ERROR}, got {msg.type}"
    )
