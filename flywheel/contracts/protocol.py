"""The wire protocol between flywheel's processes (documented in docs/protocol.md).

A message is a ZeroMQ multipart message:

    frame 0   topic     the message type as ASCII (PUB/SUB filters on it)
    frame 1   header    compact JSON: {"v", "type", "seq", "t", "fields", "arrays"}
    frame 2.. buffers   one raw C-contiguous buffer per entry of header["arrays"]

No pickle: a receiver only ever parses JSON and copies bytes into numpy arrays of an allowed dtype
and a declared shape, so a malformed or hostile message can at worst be rejected.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import zmq

from flywheel.contracts.security import Security, secure_client, secure_server

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAY_BYTES = 64 * 1024 * 1024
MAX_ARRAYS = 32
ALLOWED_DTYPES = frozenset({"bool", "uint8", "int32", "int64", "float32", "float64"})


class MessageType(StrEnum):
    TELEOP_STATE = "teleop_state"  # teleop -> daemon: operator action, pedal, key counters
    OBSERVATION = "observation"  # daemon -> watchers: what the robot sees, every tick
    EPISODE_STARTED = "episode_started"  # daemon -> watchers
    EPISODE_SAVED = "episode_saved"  # daemon -> trainer/watchers: an episode is on disk
    POLICY_SWAPPED = "policy_swapped"  # daemon -> watchers: a new policy version acts from this frame
    DEPLOY = "deploy"  # trainer / `flywheel deploy` -> daemon (REQ/REP): load, validate, swap in
    DEPLOY_REPLY = "deploy_reply"  # daemon -> requester: the outcome
    # Fleet (REQ/REP, uplink on an arm's host -> the trainer's FleetServer; docs/protocol.md "Fleet")
    ARM_POLL = "arm_poll"  # uplink -> trainer: I am here, acting version, last deploy's outcome
    FLEET_STATE = "fleet_state"  # trainer -> uplink: episodes held, the deploy target and its files
    EPISODE_CHUNK = "episode_chunk"  # uplink -> trainer: bytes of one file of one episode
    CHUNK_ACK = "chunk_ack"  # trainer -> uplink: the bytes it holds of that file
    EPISODE_COMMIT = "episode_commit"  # uplink -> trainer: the episode's files are all sent
    WEIGHTS_FETCH = "weights_fetch"  # uplink -> trainer: bytes of one file of a registry version
    WEIGHTS_CHUNK = "weights_chunk"  # trainer -> uplink: those bytes
    FLEET_ERROR = "fleet_error"  # trainer -> uplink: the request is refused, and why
    # Policy server (DEALER/ROUTER, an arm's daemon -> `flywheel serve`; docs/protocol.md "Policy server")
    INFERENCE_REQUEST = "inference_request"  # daemon -> server: an observation (+ RTC prefix)
    ACTION_CHUNK = "action_chunk"  # server -> daemon: the chunk, the version that computed it
    INFERENCE_ERROR = "inference_error"  # server -> daemon: not computed, and why


class ProtocolError(ValueError):
    """A message that does not follow the protocol. The text names the field and the value."""


def is_int(value: Any) -> bool:
    """An integer, and not a bool (JSON's true/false decode as Python bools, which are ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Message:
    type: MessageType
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    seq: int = 0
    t: float = 0.0  # sender's time.monotonic(); only comparable on one machine
    sender: str = ""  # a random id per Publisher: seq counts within one sender's life


def expect_type(msg: Message, expected: MessageType) -> None:
    """For a payload's from_message: the message is of the type it decodes."""
    if msg.type != expected:
        raise ProtocolError(f"type: expected {expected}, got {msg.type}")


def encode(msg: Message) -> list[bytes]:
    array_specs = []
    buffers = []
    for name, value in msg.arrays.items():
        arr = np.require(value, requirements="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise ProtocolError(
                f"arrays.{name}.dtype: {arr.dtype.name!r} is not one of {sorted(ALLOWED_DTYPES)}"
            )
        array_specs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        buffers.append(arr.tobytes())
    header = {
        "v": PROTOCOL_VERSION,
        "type": str(msg.type),
        "seq": msg.seq,
        "sid": msg.sender,
        "t": msg.t,
        "fields": msg.fields,
        "arrays": array_specs,
    }
    try:
        encoded = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"fields: not JSON-serialisable without NaN/inf ({e})") from None
    if len(encoded) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header: {len(encoded)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    return [str(msg.type).encode(), encoded, *buffers]


def decode(frames: list[bytes]) -> Message:
    if len(frames) < 2:
        raise ProtocolError(f"frames: expected at least 2 (topic, header), got {len(frames)}")
    if len(frames[1]) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header: {len(frames[1])} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    try:
        header = json.loads(frames[1])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"header: not valid JSON ({e})") from None
    except RecursionError:
        raise ProtocolError("header: JSON nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header: expected a JSON object, got {type(header).__name__}")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"header.v: {header.get('v')!r}, this side speaks {PROTOCOL_VERSION}")
    try:
        msg_type = MessageType(header.get("type"))
    except ValueError:
        raise ProtocolError(f"header.type: unknown message type {header.get('type')!r}") from None
    if frames[0] != str(msg_type).encode():
        raise ProtocolError(f"topic: {frames[0][:64]!r} does not match header.type {str(msg_type)!r}")
    seq, t, fields = header.get("seq"), header.get("t"), header.get("fields", {})
    if not is_int(seq) or seq < 0:
        raise ProtocolError(f"header.seq: {seq!r} is not a non-negative integer")
    if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
        raise ProtocolError(f"header.t: {t!r} is not a finite number")
    if not isinstance(fields, dict):
        raise ProtocolError(f"header.fields: expected an object, got {type(fields).__name__}")
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise ProtocolError(f"header.arrays: expected a list of at most {MAX_ARRAYS} entries")
    if len(specs) != len(frames) - 2:
        raise ProtocolError(f"header.arrays: declares {specs!r} but {len(frames) - 2} buffers follow")
    arrays = {}
    for spec, buf in zip(specs, frames[2:], strict=True):
        name, arr = _decode_array(spec, buf)
        arrays[name] = arr
    sender = header.get("sid", "")
    if not isinstance(sender, str) or len(sender) > 64:
        raise ProtocolError(f"header.sid: {str(sender)[:80]!r} is not a sender id")
    return Message(type=msg_type, fields=fields, arrays=arrays, seq=seq, t=float(t), sender=sender)


def _decode_array(spec: Any, buf: bytes) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError(f"header.arrays: entry {spec!r} has no name")
    name, dtype, shape = spec["name"], spec.get("dtype"), spec.get("shape")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"arrays.{name}.dtype: {dtype!r} is not one of {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 32 or not all(_is_dim(d) for d in shape):
        raise ProtocolError(f"arrays.{name}.shape: {shape!r} is not a list of non-negative integers")
    if len(buf) > MAX_ARRAY_BYTES:
        raise ProtocolError(f"arrays.{name}: {len(buf)} bytes exceeds the limit of {MAX_ARRAY_BYTES}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no int64 wrap-around
    if expected != len(buf):
        raise ProtocolError(f"arrays.{name}: shape {shape} of {dtype} needs {expected} bytes, got {len(buf)}")
    return name, np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


def _is_dim(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ARRAY_BYTES


class Payload(Protocol):
    """A typed message payload: each class in flywheel/contracts/messages.py is one."""

    def to_message(self) -> Message: ...


class Publisher:
    """A PUB socket that stamps each message with a sequence number and a monotonic time.

    Safe to call from several threads (one lock around the socket, which ZeroMQ requires).
    """

    def __init__(self, ctx: zmq.Context, address: str, security: Security | None = None, sndhwm: int = 100):
        self._socket = ctx.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        secure_server(self._socket, address, security)
        self._socket.bind(address)
        self._seq = 0
        self._sender = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()

    def publish(
        self,
        msg_type: MessageType,
        fields: Mapping[str, Any] | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        with self._lock:
            self._seq += 1
            msg = Message(
                msg_type, dict(fields or {}), dict(arrays or {}), self._seq, time.monotonic(), self._sender
            )
            self._socket.send_multipart(encode(msg), copy=False)

    def send(self, payload: Payload) -> None:
        """Publish a typed payload (flywheel/contracts/messages.py)."""
        msg = payload.to_message()
        self.publish(msg.type, msg.fields, msg.arrays)

    def close(self) -> None:
        with self._lock:
            self._socket.close()


@dataclass
class Received:
    message: Message
    received_at: float  # receiver's time.monotonic()


class LatestValueSubscriber:
    """Keeps the newest message of each type from one or more publishers, in a background thread.

    Latest-value semantics: a reader sees only the most recent message; older ones are dropped
    (ZeroMQ's CONFLATE does not support multipart messages, so the draining is done here).
    Malformed messages are counted and the last error kept, never raised into the reader.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        addresses: list[str],
        topics: list[MessageType],
        on_message=None,
        security: Security | None = None,
        server: str = "daemon",
    ):
        self._ctx = ctx
        self._addresses = addresses
        self._topics = topics
        self._on_message = on_message
        self._security, self._server = security, server  # server: whose public key to expect
        self._latest: dict[MessageType, Received] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.rejected = 0
        self.out_of_order = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="latest-value-sub", daemon=True)

    def start(self) -> LatestValueSubscriber:
        self._thread.start()
        return self

    def latest(self, msg_type: MessageType) -> Received | None:
        with self._lock:
            return self._latest.get(msg_type)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        socket = self._ctx.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 1000)
        # libzmq drops a peer that sends a larger frame, before it is buffered here.
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_ARRAY_BYTES)
        for topic in self._topics:
            socket.setsockopt(zmq.SUBSCRIBE, str(topic).encode())
        secure_client(socket, self._security, self._server)
        for address in self._addresses:
            socket.connect(address)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(timeout=50):
                    continue
                while True:  # drain: only the newest of each type matters
                    try:
                        frames = socket.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._accept(frames)
        finally:
            socket.close()

    def _accept(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except Exception as e:  # whatever a peer sends, the receiving thread must live on
            self.rejected += 1
            self.last_error = str(e) if isinstance(e, ProtocolError) else f"{type(e).__name__}: {e}"
            return
        received = Received(msg, time.monotonic())
        with self._lock:
            previous = self._latest.get(msg.type)
            if (
                previous is not None
                and previous.message.sender == msg.sender
                and msg.seq <= previous.message.seq
            ):
                # An older message than the one we hold (reordered, or replayed): the newest wins.
                self.out_of_order += 1
                return
            self._latest[msg.type] = received
        if self._on_message is not None:
            self._on_message(received)


def request(
    ctx: zmq.Context,
    address: str,
    msg_type: MessageType,
    fields: Mapping[str, Any],
    timeout_s: float,
    security: Security | None = None,
    connect_timeout_s: float | None = None,
    server: str = "daemon",
) -> Message:
    """One request/reply exchange (REQ socket), bounded in time: raises TimeoutError when no reply
    comes, ProtocolError when the reply is malformed. With `connect_timeout_s`, a tcp:// or ipc://
    peer that does not accept the connection that soon raises ConnectionError first, so an absent
    server is reported at once rather than after the whole reply timeout. `server` names the key
    the server must have (with `security`): the daemon's deploy endpoint by default, "trainer" for
    the trainer's fleet endpoint."""
    socket = ctx.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES + MAX_ARRAY_BYTES)
    try:
        secure_client(socket, security, server=server)
        if connect_timeout_s is not None and not address.startswith("inproc://"):
            _connect_checked(socket, address, connect_timeout_s)
        else:
            socket.connect(address)
        socket.send_multipart(encode(Message(msg_type, dict(fields), {}, 1, time.monotonic())))
        if not socket.poll(timeout=int(timeout_s * 1000)):
            raise TimeoutError(f"{address}: no reply to {msg_type} within {timeout_s:.0f} s")
        return decode(socket.recv_multipart())
    finally:
        socket.close()


def _connect_checked(socket: zmq.Socket, address: str, timeout_s: float) -> None:
    """Connect and wait for the transport to come up (ZeroMQ otherwise retries silently forever)."""
    from zmq.utils.monitor import recv_monitor_message

    monitor = socket.get_monitor_socket(zmq.EVENT_CONNECTED)
    try:
        socket.connect(address)
        if not monitor.poll(timeout=int(timeout_s * 1000)):
            raise ConnectionError(f"{address}: nothing accepted a connection within {timeout_s:g} s")
        recv_monitor_message(monitor)
    finally:
        socket.disable_monitor()
        monitor.close()
