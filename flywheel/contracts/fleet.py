"""The fleet's payloads (docs/protocol.md "Fleet"): arms on their own computers and one trainer.

Every exchange is a request from an arm's uplink (`flywheel uplink`) to the trainer's FleetServer
(one REP socket) and its reply. Every request is idempotent, so after a timeout the uplink simply
sends it again on a new socket. Like messages.py: one frozen dataclass per message type, with
`to_message()` and a `from_message()` that checks every field and raises ProtocolError naming it.

    ARM_POLL        ArmPoll        uplink -> trainer   reply FLEET_STATE
    EPISODE_CHUNK   EpisodeChunk   uplink -> trainer   reply CHUNK_ACK
    EPISODE_COMMIT  EpisodeCommit  uplink -> trainer   reply FLEET_STATE
    WEIGHTS_FETCH   WeightsFetch   uplink -> trainer   reply WEIGHTS_CHUNK
    FLEET_ERROR     FleetError     trainer -> uplink   any refused request
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from flywheel.contracts.protocol import (
    MAX_ARRAY_BYTES,
    Message,
    MessageType,
    ProtocolError,
    expect_type,
    is_int,
)
from flywheel.contracts.transfer import FileEntry, check_arm, check_relative, check_sha256

# Where an episode's files may be, relative to the dataset's root.
EPISODE_FILE_ROOTS = ("data", "meta")
DEPLOY_OUTCOMES = ("swapped", "queued", "rejected")
MAX_FILES = 64


def _int(fields: dict, prefix: str, key: str, minimum: int = 0, optional: bool = False) -> int | None:
    value = fields.get(key)
    if value is None and optional:
        return None
    if not is_int(value) or value < minimum:
        raise ProtocolError(f"{prefix}.{key}: {value!r} is not an integer >= {minimum}")
    return value


def _str(fields: dict, prefix: str, key: str, limit: int = 4096) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{prefix}.{key}: {str(value)[:80]!r} is not a string of at most {limit}")
    return value


def _entries(value: Any, prefix: str, under: tuple[str, ...] | None) -> tuple[FileEntry, ...]:
    if not isinstance(value, list) or len(value) > MAX_FILES:
        raise ProtocolError(f"{prefix}: {str(value)[:80]!r} is not a list of at most {MAX_FILES} files")
    entries = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ProtocolError(f"{prefix}[{i}]: {str(item)[:80]!r} is not an object")
        path = check_relative(item.get("path"), f"{prefix}[{i}].path", under)
        size = _int(item, f"{prefix}[{i}]", "size")
        entries.append(FileEntry(path, size, check_sha256(item.get("sha256"), f"{prefix}[{i}].sha256")))
    if len({e.path for e in entries}) != len(entries):
        raise ProtocolError(f"{prefix}: a path is listed twice")
    return tuple(entries)


def _data(msg: Message, prefix: str) -> memoryview:
    """The chunk's bytes, without another copy (a chunk is up to 64 MiB)."""
    data = msg.arrays.get("data")
    if data is None or data.dtype != np.uint8 or data.ndim != 1:
        shape = None if data is None else (data.dtype.name, data.shape)
        raise ProtocolError(f"{prefix}.arrays.data: {shape} is not a 1-D uint8 array")
    return memoryview(np.ascontiguousarray(data)).cast("B")


def _array(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


@dataclass(frozen=True)
class DeployOutcome:
    """What the arm's daemon answered to the last deploy the uplink sent it."""

    version: int
    status: str  # swapped | queued | rejected
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        return {"version": self.version, "status": self.status, "reason": self.reason}

    @classmethod
    def parse(cls, value: Any, prefix: str) -> DeployOutcome:
        if not isinstance(value, dict):
            raise ProtocolError(f"{prefix}: {str(value)[:80]!r} is not an object")
        version = _int(value, prefix, "version", minimum=1)
        status = value.get("status")
        if status not in DEPLOY_OUTCOMES:
            raise ProtocolError(f"{prefix}.status: {status!r} is not one of {list(DEPLOY_OUTCOMES)}")
        return cls(version, status, _str(value, prefix, "reason"))


@dataclass(frozen=True)
class ArmPoll:
    """An arm says it is there: its name, the version its daemon acts with (None: unknown or
    none), and the outcome of the last deploy the uplink tried (None: none yet)."""

    TYPE: ClassVar[MessageType] = MessageType.ARM_POLL

    arm: str
    acting_version: int | None = None
    report: DeployOutcome | None = None

    def to_message(self) -> Message:
        fields = {"arm": self.arm, "acting_version": self.acting_version}
        fields["report"] = None if self.report is None else self.report.fields()
        return Message(self.TYPE, fields)

    @classmethod
    def from_message(cls, msg: Message) -> ArmPoll:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        arm = check_arm(f.get("arm"), "arm_poll.arm")
        acting = _int(f, "arm_poll", "acting_version", minimum=1, optional=True)
        report = f.get("report")
        return cls(arm, acting, None if report is None else DeployOutcome.parse(report, "arm_poll.report"))


@dataclass(frozen=True)
class FleetState:
    """The trainer's answer to a poll or a commit: it holds the arm's episodes
    0..next_episode-1 (complete), and the fleet's deploy target (None: none) with its files."""

    TYPE: ClassVar[MessageType] = MessageType.FLEET_STATE

    next_episode: int
    target_version: int | None = None
    target_files: tuple[FileEntry, ...] = ()

    def to_message(self) -> Message:
        files = [e.fields() for e in self.target_files]
        return Message(
            self.TYPE,
            {"next_episode": self.next_episode, "target_version": self.target_version, "target_files": files},
        )

    @classmethod
    def from_message(cls, msg: Message) -> FleetState:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        next_episode = _int(f, "fleet_state", "next_episode")
        version = _int(f, "fleet_state", "target_version", minimum=1, optional=True)
        files = _entries(f.get("target_files"), "fleet_state.target_files", None)
        if version is not None and not files:
            raise ProtocolError(f"fleet_state.target_files: empty for target version {version}")
        return cls(next_episode, version, files)


@dataclass(frozen=True)
class EpisodeChunk:
    """Bytes of one file of one episode, at `offset` (an empty `data` asks what the trainer holds)."""

    TYPE: ClassVar[MessageType] = MessageType.EPISODE_CHUNK

    arm: str
    episode: int
    file: FileEntry  # its path relative to the dataset root, its whole size and sha256
    offset: int
    data: bytes | memoryview

    def to_message(self) -> Message:
        fields = {"arm": self.arm, "episode": self.episode, **self.file.fields(), "offset": self.offset}
        return Message(self.TYPE, fields, {"data": _array(self.data)})

    @classmethod
    def from_message(cls, msg: Message) -> EpisodeChunk:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        arm = check_arm(f.get("arm"), "episode_chunk.arm")
        episode = _int(f, "episode_chunk", "episode")
        path = check_relative(f.get("path"), "episode_chunk.path", EPISODE_FILE_ROOTS)
        size = _int(f, "episode_chunk", "size")
        sha = check_sha256(f.get("sha256"), "episode_chunk.sha256")
        offset = _int(f, "episode_chunk", "offset")
        return cls(arm, episode, FileEntry(path, size, sha), offset, _data(msg, "episode_chunk"))


@dataclass(frozen=True)
class ChunkAck:
    """The bytes the trainer holds of a file (its size: complete and verified)."""

    TYPE: ClassVar[MessageType] = MessageType.CHUNK_ACK

    path: str
    held: int

    def to_message(self) -> Message:
        return Message(self.TYPE, {"path": self.path, "held": self.held})

    @classmethod
    def from_message(cls, msg: Message) -> ChunkAck:
        expect_type(msg, cls.TYPE)
        path = check_relative(msg.fields.get("path"), "chunk_ack.path", EPISODE_FILE_ROOTS)
        return cls(path, _int(msg.fields, "chunk_ack", "held"))


@dataclass(frozen=True)
class EpisodeCommit:
    """Episode `episode` of `arm` is complete: these files (all sent in chunks before) make it:
    its data parquet, its meta/episodes parquet, and the arm's meta/info.json, meta/tasks.parquet
    and (when it has one) meta/stats.json."""

    TYPE: ClassVar[MessageType] = MessageType.EPISODE_COMMIT

    arm: str
    episode: int
    files: tuple[FileEntry, ...]

    def to_message(self) -> Message:
        fields = {"arm": self.arm, "episode": self.episode, "files": [e.fields() for e in self.files]}
        return Message(self.TYPE, fields)

    @classmethod
    def from_message(cls, msg: Message) -> EpisodeCommit:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        arm = check_arm(f.get("arm"), "episode_commit.arm")
        episode = _int(f, "episode_commit", "episode")
        return cls(arm, episode, _entries(f.get("files"), "episode_commit.files", EPISODE_FILE_ROOTS))


@dataclass(frozen=True)
class WeightsFetch:
    """`length` bytes from `offset` of the file `name` of registry version `version`."""

    TYPE: ClassVar[MessageType] = MessageType.WEIGHTS_FETCH

    arm: str
    version: int
    name: str
    offset: int
    length: int

    def to_message(self) -> Message:
        fields = {
            "arm": self.arm,
            "version": self.version,
            "name": self.name,
            "offset": self.offset,
            "length": self.length,
        }
        return Message(self.TYPE, fields)

    @classmethod
    def from_message(cls, msg: Message) -> WeightsFetch:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        arm = check_arm(f.get("arm"), "weights_fetch.arm")
        version = _int(f, "weights_fetch", "version", minimum=1)
        name = check_relative(f.get("name"), "weights_fetch.name")
        offset = _int(f, "weights_fetch", "offset")
        length = _int(f, "weights_fetch", "length", minimum=1)
        if length > MAX_ARRAY_BYTES:
            raise ProtocolError(f"weights_fetch.length: {length} exceeds {MAX_ARRAY_BYTES}")
        return cls(arm, version, name, offset, length)


@dataclass(frozen=True)
class WeightsChunk:
    """The bytes asked for (fewer at the end of the file)."""

    TYPE: ClassVar[MessageType] = MessageType.WEIGHTS_CHUNK

    version: int
    name: str
    offset: int
    data: bytes | memoryview

    def to_message(self) -> Message:
        fields = {"version": self.version, "name": self.name, "offset": self.offset}
        return Message(self.TYPE, fields, {"data": _array(self.data)})

    @classmethod
    def from_message(cls, msg: Message) -> WeightsChunk:
        expect_type(msg, cls.TYPE)
        f = msg.fields
        version = _int(f, "weights_chunk", "version", minimum=1)
        name = check_relative(f.get("name"), "weights_chunk.name")
        offset = _int(f, "weights_chunk", "offset")
        return cls(version, name, offset, _data(msg, "weights_chunk"))


@dataclass(frozen=True)
class FleetError:
    """The trainer refused the request; `reason` names the field and the value."""

    TYPE: ClassVar[MessageType] = MessageType.FLEET_ERROR

    reason: str

    def to_message(self) -> Message:
        return Message(self.TYPE, {"reason": self.reason[:4000]})

    @classmethod
    def from_message(cls, msg: Message) -> FleetError:
        expect_type(msg, cls.TYPE)
        return cls(_str(msg.fields, "fleet_error", "reason"))


class FleetRefused(RuntimeError):
    """The trainer answered a request with FLEET_ERROR."""


def parse_reply(msg: Message, expected: type):
    """The typed reply `expected` (FleetState, ChunkAck, WeightsChunk); FleetRefused with the
    trainer's reason for a FLEET_ERROR; ProtocolError for anything else."""
    if msg.type == MessageType.FLEET_ERROR:
        raise FleetRefused(FleetError.from_message(msg).reason)
    return expected.from_message(msg)
