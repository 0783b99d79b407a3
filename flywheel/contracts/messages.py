"""The payload of each wire message (docs/protocol.md), typed: one class per `MessageType`.

`protocol.py` frames a message (topic, JSON header, raw buffers); this module says what the header's
`fields` and the buffers hold for each type. Every payload is a frozen dataclass with a `TYPE`, a
`to_message()` that builds the `Message` to send (`Publisher.send(payload)`) and a
`from_message()` that checks a received one and raises `ProtocolError` naming the field and value.

    OBSERVATION      Observation     daemon -> teleop, watchers
    TELEOP_STATE     TeleopState     teleop process -> daemon
    EPISODE_STARTED  EpisodeStarted  daemon -> watchers
    EPISODE_SAVED    EpisodeSaved    daemon -> trainer, watchers
    POLICY_SWAPPED   PolicySwapped   daemon -> watchers
    DEPLOY           DeployRequest   trainer / `flywheel deploy` -> daemon (REQ/REP)
    DEPLOY_REPLY     DeployReply     daemon -> requester
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import zmq

from flywheel.contracts.protocol import Message, MessageType, ProtocolError, expect_type, is_int
from flywheel.contracts.protocol import request as _request
from flywheel.contracts.registry import ModelRegistry
from flywheel.contracts.security import Security

# The operator's episode keys; TELEOP_STATE carries a press counter for each.
EPISODE_KEYS = ("success", "failure", "rerecord", "estop")


def _check_fields(msg: Message, prefix: str, spec: tuple[tuple[str, type], ...]) -> None:
    for key, kind in spec:
        value = msg.fields.get(key)
        ok = is_int(value) if kind is int else isinstance(value, kind)
        if not ok:
            raise ProtocolError(f"{prefix}.fields.{key}: {value!r} is not a {kind.__name__}")


# --------------------------------------------------------------------------------------------------
# daemon -> teleop, watchers


@dataclass(frozen=True)
class Observation:
    """What the robot sees, once per tick: what a simulated operator and pedal act on."""

    TYPE: ClassVar[MessageType] = MessageType.OBSERVATION

    episode: int
    frame: int
    task: str
    names: tuple[str, ...]
    state: np.ndarray  # float32, the robot's scalar observation features in `names` order
    sim_task: str = ""  # the MetaWorld task when the robot is the sim, else empty

    def fields(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "frame": self.frame,
            "task": self.task,
            "names": list(self.names),
            "sim_task": self.sim_task,
        }

    def to_message(self) -> Message:
        return Message(self.TYPE, self.fields(), {"state": self.state})

    @classmethod
    def from_message(cls, msg: Message) -> Observation:
        expect_type(msg, cls.TYPE)
        spec = (("episode", int), ("frame", int), ("task", str), ("names", list), ("sim_task", str))
        _check_fields(msg, "observation", spec)
        f = msg.fields
        state = msg.arrays.get("state")
        if state is None or state.ndim != 1 or len(state) != len(f["names"]):
            shape = None if state is None else state.shape
            raise ProtocolError(
                f"observation.arrays.state: shape {shape} does not match {len(f['names'])} names"
            )
        return cls(
            f["episode"], f["frame"], f["task"], tuple(f["names"]), state.astype(np.float32), f["sim_task"]
        )


@dataclass(frozen=True)
class EpisodeStarted:
    """An episode attempt begins (sent before its first observation)."""

    TYPE: ClassVar[MessageType] = MessageType.EPISODE_STARTED

    episode: int  # attempt number in this run, as in Observation.episode
    task: str

    def to_message(self) -> Message:
        return Message(self.TYPE, {"episode": self.episode, "task": self.task})

    @classmethod
    def from_message(cls, msg: Message) -> EpisodeStarted:
        expect_type(msg, cls.TYPE)
        _check_fields(msg, "episode_started", (("episode", int), ("task", str)))
        return cls(msg.fields["episode"], msg.fields["task"])


@dataclass(frozen=True)
class EpisodeSaved:
    """An episode's files are written and closed: it can be read from disk."""

    TYPE: ClassVar[MessageType] = MessageType.EPISODE_SAVED

    episode_index: int  # the episode's index in the dataset
    length: int  # frames saved
    data_type: str  # demo | auto | intervention
    success: bool
    root: str  # the dataset root, absolute

    def to_message(self) -> Message:
        return Message(
            self.TYPE,
            {
                "episode_index": self.episode_index,
                "length": self.length,
                "data_type": self.data_type,
                "success": self.success,
                "root": self.root,
            },
        )

    @classmethod
    def from_message(cls, msg: Message) -> EpisodeSaved:
        expect_type(msg, cls.TYPE)
        spec = (("episode_index", int), ("length", int), ("data_type", str), ("success", bool), ("root", str))
        _check_fields(msg, "episode_saved", spec)
        f = msg.fields
        return cls(f["episode_index"], f["length"], f["data_type"], f["success"], f["root"])


@dataclass(frozen=True)
class PolicySwapped:
    """A new policy version acts from `frame` on."""

    TYPE: ClassVar[MessageType] = MessageType.POLICY_SWAPPED

    version: int  # registry number
    frame: int  # tick of the episode from which its chunks act

    def to_message(self) -> Message:
        return Message(self.TYPE, {"version": self.version, "frame": self.frame})

    @classmethod
    def from_message(cls, msg: Message) -> PolicySwapped:
        expect_type(msg, cls.TYPE)
        _check_fields(msg, "policy_swapped", (("version", int), ("frame", int)))
        return cls(msg.fields["version"], msg.fields["frame"])


# --------------------------------------------------------------------------------------------------
# teleop process -> daemon


@dataclass(frozen=True)
class TeleopState:
    """The operator device's action, the pedal and the episode-key press counters.

    `episode` and `frame` name the newest observation the teleop process has seen (-1 before the
    first), which is how the daemon in lockstep knows the answer is to this very observation.
    """

    TYPE: ClassVar[MessageType] = MessageType.TELEOP_STATE

    episode: int
    frame: int
    pressed: bool
    keys: Mapping[str, int]  # press counters of EPISODE_KEYS
    names: tuple[str, ...]  # the device's action names, in `action` order
    action: np.ndarray | None  # float32 (len(names),); None: no usable action

    def to_message(self) -> Message:
        fields = {
            "episode": self.episode,
            "frame": self.frame,
            "pressed": self.pressed,
            "keys": dict(self.keys),
            "names": list(self.names),
        }
        return Message(self.TYPE, fields, {} if self.action is None else {"action": self.action})

    def action_by_name(self) -> dict[str, float] | None:
        if self.action is None:
            return None
        return dict(zip(self.names, self.action.astype(float).tolist(), strict=True))

    @staticmethod
    def answering(msg: Message) -> tuple[int, int]:
        """(episode, frame) of the observation a TELEOP_STATE message answers, without decoding
        the rest (the daemon polls this in lockstep); a value that is not an integer reads -1."""
        episode, frame = msg.fields.get("episode"), msg.fields.get("frame")
        return (episode if is_int(episode) else -1, frame if is_int(frame) else -1)

    @classmethod
    def from_message(cls, msg: Message) -> TeleopState:
        """Lenient where the daemon can carry on: an action that does not match `names` or is not
        finite decodes as None, unknown keys are dropped, a missing `pressed` is False, and an
        `episode` or `frame` that is not an integer decodes as -1 (an answer to no observation)."""
        expect_type(msg, cls.TYPE)
        f = msg.fields
        names = f.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError(f"teleop_state.fields.names: {names!r} is not a list of names")
        raw_keys = f.get("keys") or {}
        if not isinstance(raw_keys, dict):
            raise ProtocolError(f"teleop_state.fields.keys: {raw_keys!r} is not an object")
        try:
            keys = {k: int(v) for k, v in raw_keys.items() if k in EPISODE_KEYS}
        except (TypeError, ValueError):
            raise ProtocolError(f"teleop_state.fields.keys: {raw_keys!r} holds a non-integer count") from None
        action = msg.arrays.get("action")
        if action is None or action.ndim != 1 or len(action) != len(names) or not np.all(np.isfinite(action)):
            action = None
        episode, frame = cls.answering(msg)
        return cls(
            episode,
            frame,
            bool(f.get("pressed")),
            keys,
            tuple(names),
            action,
        )


# --------------------------------------------------------------------------------------------------
# deploy (REQ/REP)


@dataclass(frozen=True)
class DeployRequest:
    """Swap in registry `version` (its folder `path`, the sha256 of its weights), or roll back to
    the version that acted before the current one."""

    TYPE: ClassVar[MessageType] = MessageType.DEPLOY

    version: int | None = None
    path: Path | None = None  # a LeRobot pretrained_model folder
    sha256: str | None = None  # of its model.safetensors
    rollback: bool = False

    @classmethod
    def of_version(cls, registry: ModelRegistry, version: int) -> DeployRequest:
        """The request for a published version (FileNotFoundError, naming it, when it is absent)."""
        sha256 = registry.manifest(version).sha256
        return cls(version, registry.path(version).resolve(), sha256)

    @classmethod
    def back(cls) -> DeployRequest:
        """The rollback request."""
        return cls(rollback=True)

    def fields(self) -> dict[str, Any]:
        if self.rollback:
            return {"rollback": True}
        return {"version": self.version, "path": str(self.path), "sha256": self.sha256}

    def to_message(self) -> Message:
        return Message(self.TYPE, self.fields())

    @classmethod
    def from_message(cls, msg: Message) -> DeployRequest:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        if f.get("rollback"):
            return cls.back()
        version, path, sha = f.get("version"), f.get("path"), f.get("sha256")
        if not is_int(version) or version < 1:
            raise ProtocolError(f"deploy.version: {version!r} is not a positive integer")
        if not isinstance(path, str) or not path:
            raise ProtocolError(f"deploy.path: {path!r} is not a path")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ProtocolError(f"deploy.sha256: {sha!r} is not a sha256 hex digest")
        return cls(version, Path(path), sha)


DEPLOY_STATUSES = ("swapped", "queued", "rejected")


@dataclass(frozen=True)
class DeployReply:
    """The daemon's answer: `swapped` (acting now), `queued` (adopted at the next tick) with the
    `version`, or `rejected` with the `reason`; and the version acting after the request."""

    TYPE: ClassVar[MessageType] = MessageType.DEPLOY_REPLY

    status: str
    acting_version: int | None
    version: int | None = None  # set when swapped or queued
    reason: str | None = None  # set when rejected: names the field and value

    @property
    def accepted(self) -> bool:
        return self.status in ("swapped", "queued")

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"status": self.status}
        if self.version is not None:
            fields["version"] = self.version
        if self.reason is not None:
            fields["reason"] = self.reason
        fields["acting_version"] = self.acting_version
        return fields

    def to_message(self) -> Message:
        return Message(self.TYPE, self.fields())

    @classmethod
    def from_message(cls, msg: Message) -> DeployReply:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        status, version, reason, acting = (
            f.get("status"),
            f.get("version"),
            f.get("reason"),
            f.get("acting_version"),
        )
        if status not in DEPLOY_STATUSES:
            raise ProtocolError(f"deploy_reply.status: {status!r} is not one of {list(DEPLOY_STATUSES)}")
        for key, value in (("version", version), ("acting_version", acting)):
            if value is not None and not is_int(value):
                raise ProtocolError(f"deploy_reply.{key}: {value!r} is not an integer")
        if reason is not None and not isinstance(reason, str):
            raise ProtocolError(f"deploy_reply.reason: {reason!r} is not a string")
        return cls(status, acting, version, reason)


def send_deploy(
    ctx: zmq.Context,
    address: str,
    request: DeployRequest,
    timeout_s: float,
    security: Security | None = None,
    connect_timeout_s: float | None = None,
    server: str = "daemon",
) -> DeployReply:
    """One DEPLOY exchange with a daemon or a policy server (`protocol.request`): TimeoutError when
    no reply comes, ConnectionError (with `connect_timeout_s`) when nothing accepts the connection,
    ProtocolError when the reply is malformed. `server`: the key it must hold (WireConfig.deploy_key)."""
    reply = _request(
        ctx,
        address,
        request.TYPE,
        request.fields(),
        timeout_s,
        security,
        connect_timeout_s=connect_timeout_s,
        server=server,
    )
    return DeployReply.from_message(reply)
