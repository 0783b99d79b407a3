"""The wire protocol: encode/decode, what decode rejects, and publisher -> latest-value subscriber."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from flywheel.contracts.messages import (
    EPISODE_KEYS,
    DeployReply,
    DeployRequest,
    EpisodeSaved,
    EpisodeStarted,
    Observation,
    PolicySwapped,
    TeleopState,
    send_deploy,
)
from flywheel.contracts.protocol import (
    MAX_ARRAYS,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    LatestValueSubscriber,
    Message,
    MessageType,
    ProtocolError,
    Publisher,
    decode,
    encode,
)

OBS = MessageType.OBSERVATION

# --------------------------------------------------------------------------------------------------
# encode / decode


ROUND_TRIP_ARRAYS = {
    "b": np.array([True, False, True]),
    "u8": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    "i32": np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
    "i64": np.array([[-(2**62)], [2**62]], dtype=np.int64),
    "f32": np.linspace(-1, 1, 7, dtype=np.float32),
    "f64": np.array([np.pi, -0.0, np.inf, 1e-300]),
    "empty": np.zeros((0,), dtype=np.float32),
    "empty_2d": np.zeros((3, 0), dtype=np.int32),
    "empty_3d": np.zeros((2, 0, 5), dtype=np.uint8),
}


def test_round_trip_fields_arrays_seq_t():
    msg = Message(
        MessageType.TELEOP_STATE,
        fields={"frame": 12, "pressed": True, "names": ["a", "b"], "nested": {"x": None, "y": 1.5}},
        arrays=dict(ROUND_TRIP_ARRAYS),
        seq=41,
        t=123.25,
    )
    frames = encode(msg)
    assert frames[0] == b"teleop_state"
    assert len(frames) == 2 + len(ROUND_TRIP_ARRAYS)
    out = decode(frames)
    assert out.type is MessageType.TELEOP_STATE
    assert out.seq == 41
    assert out.t == 123.25
    assert out.fields == msg.fields
    assert list(out.arrays) == list(ROUND_TRIP_ARRAYS)
    for name, expected in ROUND_TRIP_ARRAYS.items():
        got = out.arrays[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("scalar", [np.array(3.5), np.array(7, dtype=np.int64), np.array(True)])
def test_round_trip_zero_dimensional_array(scalar):
    frames = encode(Message(OBS, arrays={"s": scalar}))
    assert json.loads(frames[1])["arrays"][0]["shape"] == []
    out = decode(frames).arrays["s"]
    assert out.shape == ()
    assert out.dtype == scalar.dtype
    assert out == scalar


@pytest.mark.parametrize("msg_type", list(MessageType))
def test_round_trip_every_type_without_arrays(msg_type):
    out = decode(encode(Message(msg_type, seq=0)))
    assert out.type is msg_type
    assert out.arrays == {}
    assert out.fields == {}
    assert out.seq == 0


def test_round_trip_non_contiguous_arrays():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    arrays = {"transposed": base.T, "strided": base[::2, 1::2], "reversed": base[:, ::-1]}
    out = decode(encode(Message(OBS, arrays=arrays)))
    for name, expected in arrays.items():
        np.testing.assert_array_equal(out.arrays[name], expected, err_msg=name)
        assert out.arrays[name].shape == expected.shape


def test_decoded_arrays_are_writable_copies():
    out = decode(encode(Message(OBS, arrays={"x": np.zeros(3, dtype=np.float32)})))
    arr = out.arrays["x"]
    assert arr.flags.writeable
    arr[0] = 1.0  # would raise on a read-only view of the received bytes
    assert arr[0] == 1.0


@pytest.mark.parametrize("dtype", [np.float16, object, np.complex64, np.uint16])
def test_encode_refuses_dtypes_outside_the_allowed_set(dtype):
    arr = np.array([1, 2], dtype=dtype)
    with pytest.raises(ProtocolError, match=r"arrays\.bad\.dtype"):
        encode(Message(OBS, arrays={"bad": arr}))


def test_encode_refuses_fields_json_cannot_carry():
    with pytest.raises(ProtocolError, match=r"^fields"):
        encode(Message(OBS, fields={"x": float("nan")}))
    with pytest.raises(ProtocolError, match=r"^fields"):
        encode(Message(OBS, fields={"x": object()}))


def test_encode_refuses_an_oversized_header():
    with pytest.raises(ProtocolError, match=r"^header: \d+ bytes exceeds"):
        encode(Message(OBS, fields={"blob": "x" * MAX_HEADER_BYTES}))


# --------------------------------------------------------------------------------------------------
# decode rejects


def _frames(header_overrides: dict | None = None, buffers: list[bytes] | None = None, topic=b"observation"):
    """A valid OBSERVATION message's frames with parts of its header replaced."""
    header = {"v": PROTOCOL_VERSION, "type": "observation", "seq": 1, "t": 0.5, "fields": {}, "arrays": []}
    header.update(header_overrides or {})
    return [topic, json.dumps(header).encode(), *(buffers or [])]


def _spec(name="x", dtype="float32", shape=(2,)):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def test_the_helper_builds_a_valid_message():
    # The rejection tests below change one thing each of this message.
    x = np.array([1.0, 2.0], dtype=np.float32)
    msg = decode(_frames({"arrays": [_spec()]}, [x.tobytes()]))
    np.testing.assert_array_equal(msg.arrays["x"], x)


REJECTED = {
    "too few frames": ([b"observation"], r"^frames"),
    "wrong version": (_frames({"v": PROTOCOL_VERSION + 1}), r"^header\.v: 2"),
    "missing version": (_frames({"v": None}), r"^header\.v"),
    "unknown type": (_frames({"type": "bogus"}, topic=b"bogus"), r"^header\.type: .*'bogus'"),
    "topic/type mismatch": (_frames(topic=b"teleop_state"), r"^topic: .*teleop_state.*observation"),
    "non-JSON header": ([b"observation", b"{not json"], r"^header: not valid JSON"),
    "non-UTF-8 header": ([b"observation", b"\xff\xfe{}"], r"^header: not valid JSON"),
    "header not an object": ([b"observation", b"[1, 2]"], r"^header: expected a JSON object"),
    "oversized header": (
        [b"observation", b" " * (MAX_HEADER_BYTES + 1)],
        rf"^header: {MAX_HEADER_BYTES + 1} bytes exceeds",
    ),
    "negative seq": (_frames({"seq": -1}), r"^header\.seq: -1"),
    "fractional seq": (_frames({"seq": 1.5}), r"^header\.seq: 1\.5"),
    "missing seq": (_frames({"seq": None}), r"^header\.seq"),
    "boolean seq": (_frames({"seq": True}), r"^header\.seq: True"),
    "non-finite t": (
        [b"observation", b'{"v":1,"type":"observation","seq":1,"t":NaN,"fields":{},"arrays":[]}'],
        r"^header\.t: nan",
    ),
    "too many arrays": (
        _frames({"arrays": [_spec(f"a{i}", "uint8", ()) for i in range(MAX_ARRAYS + 1)]}),
        r"^header\.arrays",
    ),
    "t not a number": (_frames({"t": "now"}), r"^header\.t: 'now'"),
    "fields not an object": (_frames({"fields": [1]}), r"^header\.fields"),
    "arrays not a list": (_frames({"arrays": {"x": 1}}), r"^header\.arrays"),
    "missing buffers": (_frames({"arrays": [_spec(), _spec("y")]}, [b"\0" * 8]), r"^header\.arrays"),
    "extra buffers": (_frames({"arrays": []}, [b"\0" * 8]), r"^header\.arrays"),
    "array spec without a name": (_frames({"arrays": [{"dtype": "uint8"}]}, [b""]), r"^header\.arrays"),
    "object dtype": (_frames({"arrays": [_spec(dtype="object")]}, [b"\0" * 16]), r"^arrays\.x\.dtype"),
    "float16 dtype": (_frames({"arrays": [_spec(dtype="float16")]}, [b"\0" * 4]), r"^arrays\.x\.dtype"),
    "numpy dtype spelling": (_frames({"arrays": [_spec(dtype="<f4")]}, [b"\0" * 8]), r"^arrays\.x\.dtype"),
    "negative dimension": (_frames({"arrays": [_spec(shape=(-2,))]}, [b""]), r"^arrays\.x\.shape"),
    "shape not a list": (
        _frames({"arrays": [{"name": "x", "dtype": "uint8", "shape": 3}]}, [b"\0" * 3]),
        r"^arrays\.x\.shape",
    ),
    "fractional dimension": (_frames({"arrays": [_spec(shape=(1.5,))]}, [b"\0" * 6]), r"^arrays\.x\.shape"),
    "too few bytes for the shape": (
        _frames({"arrays": [_spec(shape=(2, 3))]}, [b"\0" * 20]),
        r"^arrays\.x: shape \[2, 3\] of float32 needs 24 bytes, got 20",
    ),
    "too many bytes for the shape": (
        _frames({"arrays": [_spec(shape=())]}, [b"\0" * 8]),
        r"^arrays\.x: .*needs 4 bytes, got 8",
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_decode_rejects_with_a_message_naming_the_field(case):
    frames, pattern = REJECTED[case]
    with pytest.raises(ProtocolError, match=pattern):
        decode(frames)


def _deeply_nested_header() -> list[bytes]:
    return [b"observation", b"[" * 50_000]  # well under MAX_HEADER_BYTES


def _overflowing_shape() -> list[bytes]:
    # 2**62 * 4 elements wraps to 0 in int64, so 0 bytes "match" the declared shape.
    return _frames({"arrays": [_spec(dtype="uint8", shape=(2**62, 4))]}, [b""])


def _huge_dimension() -> list[bytes]:
    return _frames({"arrays": [_spec(dtype="uint8", shape=(2**70,))]}, [b""])


def test_decode_rejects_deeply_nested_header_with_protocol_error():
    with pytest.raises(ProtocolError, match=r"^header"):
        decode(_deeply_nested_header())


def test_decode_rejects_shape_whose_size_overflows_with_protocol_error():
    with pytest.raises(ProtocolError, match=r"^arrays\.x"):
        decode(_overflowing_shape())


def test_decode_rejects_huge_dimension_with_protocol_error():
    with pytest.raises(ProtocolError, match=r"^arrays\.x"):
        decode(_huge_dimension())


# --------------------------------------------------------------------------------------------------
# Publisher -> LatestValueSubscriber over loopback


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0, poke: Callable[[], None] | None = None):
    """Poll `condition` until it holds or `timeout` passes; `poke` runs each round (e.g. to publish)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poke is not None:
            poke()
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def subscribers():
    """Collects started subscribers and stops them all at the end of the test."""
    started: list[LatestValueSubscriber] = []
    yield started
    for sub in started:
        sub.stop()


def _subscribe(ctx, subscribers, address, topics, on_message=None) -> LatestValueSubscriber:
    sub = LatestValueSubscriber(ctx, [address], topics, on_message=on_message).start()
    subscribers.append(sub)
    return sub


def test_subscriber_keeps_only_the_latest_of_many(ctx, subscribers, free_tcp_address):
    received: list[int] = []
    lock = threading.Lock()

    def on_message(r):
        with lock:
            received.append(r.message.fields["i"])

    pub = Publisher(ctx, free_tcp_address)
    try:
        sub = _subscribe(ctx, subscribers, free_tcp_address, [OBS], on_message)
        # Slow joiner: publish until the subscription is through.
        assert _wait_for(
            lambda: sub.latest(OBS) is not None, poke=lambda: pub.publish(OBS, {"i": -1}), timeout=5
        ), "the subscriber never received a message"
        first_seq = sub.latest(OBS).message.seq

        n = 50  # below the publisher's high-water mark, so none is dropped on the way
        for i in range(n):
            pub.publish(OBS, {"i": i}, {"state": np.full(3, i, dtype=np.float32)})
        assert _wait_for(lambda: sub.latest(OBS).message.fields["i"] == n - 1), sub.latest(OBS)

        latest = sub.latest(OBS)
        np.testing.assert_array_equal(latest.message.arrays["state"], np.full(3, n - 1, dtype=np.float32))
        assert latest.message.seq > first_seq  # the publisher numbers its messages
        assert latest.received_at <= time.monotonic()
        with lock:
            got = [i for i in received if i >= 0]
        assert got == sorted(got), "messages arrived out of order"
        assert got[-1] == n - 1
        assert sub.rejected == 0
        # Still the newest after the burst: nothing older overwrote it.
        time.sleep(0.1)
        assert sub.latest(OBS).message.fields["i"] == n - 1
    finally:
        pub.close()


def test_subscriber_keeps_the_latest_per_type_and_filters_topics(ctx, subscribers, free_tcp_address):
    pub = Publisher(ctx, free_tcp_address)
    try:
        sub = _subscribe(ctx, subscribers, free_tcp_address, [OBS, MessageType.EPISODE_SAVED])

        observation = Observation(3, 7, "push", ("a",), np.ones(1, dtype=np.float32))
        saved = EpisodeSaved(2, 40, "auto", True, "/tmp/ds")

        def poke():
            pub.send(TeleopState(3, 7, False, dict.fromkeys(EPISODE_KEYS, 0), (), None))
            pub.send(observation)
            pub.send(saved)

        assert _wait_for(
            lambda: sub.latest(OBS) is not None and sub.latest(MessageType.EPISODE_SAVED) is not None,
            poke=poke,
        )
        got = Observation.from_message(sub.latest(OBS).message)
        assert (got.episode, got.frame, got.names) == (3, 7, ("a",))
        assert EpisodeSaved.from_message(sub.latest(MessageType.EPISODE_SAVED).message) == saved
        assert sub.latest(MessageType.TELEOP_STATE) is None  # not subscribed
        assert sub.latest(MessageType.EPISODE_STARTED) is None  # never sent
    finally:
        pub.close()


def _raw_pub(ctx, address):
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    return sock


def _good(seq: int) -> list[bytes]:
    return encode(Message(OBS, {"n": seq}, {"x": np.array([seq], dtype=np.int64)}, seq=seq, t=1.0))


def test_malformed_message_is_counted_and_later_ones_still_arrive(ctx, subscribers, free_tcp_address):
    raw = _raw_pub(ctx, free_tcp_address)
    try:
        sub = _subscribe(ctx, subscribers, free_tcp_address, [OBS])
        assert _wait_for(lambda: sub.latest(OBS) is not None, poke=lambda: raw.send_multipart(_good(1)))
        assert sub.rejected == 0
        assert sub.last_error is None

        raw.send_multipart([b"observation", b"{not json"])
        raw.send_multipart(_frames({"v": 99}))
        raw.send_multipart(_good(2))
        assert _wait_for(lambda: sub.latest(OBS).message.seq == 2)
        assert sub.rejected == 2
        assert sub.last_error is not None
        assert sub.last_error.startswith("header.v: 99")
        assert sub.latest(OBS).message.fields == {"n": 2}

        # A malformed message never replaces the latest good one.
        raw.send_multipart(_frames({"arrays": [_spec(shape=(5,))]}, [b"\0"]))
        assert _wait_for(lambda: sub.rejected == 3)
        assert sub.last_error.startswith("arrays.x")
        assert sub.latest(OBS).message.seq == 2
    finally:
        raw.close()


@pytest.mark.parametrize(
    "hostile",
    [_deeply_nested_header, _overflowing_shape, _huge_dimension],
    ids=["deeply-nested-header", "overflowing-shape", "huge-dimension"],
)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_hostile_message_does_not_stop_the_subscriber(ctx, subscribers, free_tcp_address, hostile):
    raw = _raw_pub(ctx, free_tcp_address)
    try:
        sub = _subscribe(ctx, subscribers, free_tcp_address, [OBS])
        assert _wait_for(lambda: sub.latest(OBS) is not None, poke=lambda: raw.send_multipart(_good(1)))
        raw.send_multipart(hostile())
        arrived = _wait_for(
            lambda: sub.latest(OBS).message.seq == 2, poke=lambda: raw.send_multipart(_good(2)), timeout=1.5
        )
        assert arrived, "no message arrived after the hostile one"
        assert sub.rejected == 1
    finally:
        raw.close()


def test_an_older_message_from_the_same_sender_never_replaces_a_newer_one(ctx, subscribers, free_tcp_address):
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(free_tcp_address)
    sub = _subscribe(ctx, subscribers, free_tcp_address, [MessageType.EPISODE_SAVED])

    def send(sender: str, seq: int) -> None:
        raw.send_multipart(encode(Message(MessageType.EPISODE_SAVED, {"n": seq}, seq=seq, sender=sender)))

    assert _wait_for(lambda: sub.latest(MessageType.EPISODE_SAVED) is not None, poke=lambda: send("a", 5))
    send("a", 3)  # reordered or replayed: older than what is held
    assert _wait_for(lambda: sub.out_of_order >= 1)
    assert sub.latest(MessageType.EPISODE_SAVED).message.seq == 5
    send("b", 1)  # a restarted publisher is a new sender: its first message is taken
    assert _wait_for(lambda: sub.latest(MessageType.EPISODE_SAVED).message.sender == "b")
    raw.close()


# --------------------------------------------------------------------------------------------------
# payloads (flywheel/contracts/messages.py): one class per message type


def _wire(msg: Message) -> Message:
    """Through the framing and back, as a receiver gets it."""
    return decode(encode(msg))


SHA = "ab" * 32


def test_observation_round_trip():
    sent = Observation(1, 2, "push the puck", ("x", "y"), np.array([0.5, -1.0], dtype=np.float32), "push-v3")
    msg = sent.to_message()
    assert msg.type is MessageType.OBSERVATION
    assert msg.fields == {
        "episode": 1,
        "frame": 2,
        "task": "push the puck",
        "names": ["x", "y"],
        "sim_task": "push-v3",
    }
    got = Observation.from_message(_wire(msg))
    assert (got.episode, got.frame, got.task, got.names, got.sim_task) == (
        1,
        2,
        "push the puck",
        ("x", "y"),
        "push-v3",
    )
    np.testing.assert_array_equal(got.state, sent.state)
    assert got.state.dtype == np.float32


def test_teleop_state_round_trip():
    keys = {"success": 1, "failure": 0, "rerecord": 2, "estop": 0}
    sent = TeleopState(4, 9, True, keys, ("a", "b"), np.array([0.25, -0.5], dtype=np.float32))
    msg = sent.to_message()
    assert msg.fields == {"episode": 4, "frame": 9, "pressed": True, "keys": keys, "names": ["a", "b"]}
    assert list(msg.arrays) == ["action"]
    got = TeleopState.from_message(_wire(msg))
    assert (got.episode, got.frame, got.pressed, dict(got.keys), got.names) == (4, 9, True, keys, ("a", "b"))
    assert got.action_by_name() == {"a": 0.25, "b": -0.5}
    assert TeleopState.answering(msg) == (4, 9)


def test_teleop_state_decode_is_lenient_where_the_daemon_can_carry_on():
    def state(fields, action):
        return TeleopState.from_message(_wire(Message(MessageType.TELEOP_STATE, fields, action)))

    names = {"names": ["a", "b"]}
    assert state(names, {"action": np.array([1.0, np.nan], dtype=np.float32)}).action is None  # not finite
    assert state(names, {"action": np.zeros(3, dtype=np.float32)}).action is None  # does not match names
    assert state(names, {}).action_by_name() is None  # no action at all
    got = state({"keys": {"success": 2, "jump": 5}, "episode": "x", "frame": 1.5}, {})
    assert dict(got.keys) == {"success": 2}  # unknown keys dropped
    assert (got.episode, got.frame, got.pressed, got.names) == (-1, -1, False, ())


def test_episode_events_round_trip():
    for sent in (
        EpisodeStarted(3, "push"),
        EpisodeSaved(5, 200, "intervention", False, "/d"),
        PolicySwapped(2, 17),
    ):
        msg = sent.to_message()
        assert msg.type is type(sent).TYPE
        assert type(sent).from_message(_wire(msg)) == sent
    assert EpisodeSaved(5, 200, "auto", True, "/d").to_message().fields == {
        "episode_index": 5,
        "length": 200,
        "data_type": "auto",
        "success": True,
        "root": "/d",
    }


def test_deploy_request_and_reply_round_trip(tmp_path):
    sent = DeployRequest(3, tmp_path / "v0003", SHA)
    assert sent.to_message().fields == {"version": 3, "path": str(tmp_path / "v0003"), "sha256": SHA}
    assert DeployRequest.from_message(_wire(sent.to_message())) == sent
    back = DeployRequest.back()
    assert back.to_message().fields == {"rollback": True}
    assert DeployRequest.from_message(_wire(back.to_message())) == back
    for reply, fields in (
        (DeployReply("swapped", 3, version=3), {"status": "swapped", "version": 3, "acting_version": 3}),
        (
            DeployReply("rejected", None, reason="no"),
            {"status": "rejected", "reason": "no", "acting_version": None},
        ),
    ):
        assert list(reply.to_message().fields.items()) == list(fields.items())  # the order on the wire too
        assert DeployReply.from_message(_wire(reply.to_message())) == reply


def test_deploy_request_of_a_registry_version(tmp_path):
    from flywheel.contracts.registry import WEIGHTS_FILE, ModelRegistry

    model = tmp_path / "model"
    model.mkdir()
    (model / WEIGHTS_FILE).write_bytes(b"weights")
    registry = ModelRegistry(tmp_path / "models")
    manifest = registry.publish(model)
    deploy = DeployRequest.of_version(registry, manifest.version)
    assert deploy == DeployRequest(1, registry.path(1).resolve(), manifest.sha256)
    with pytest.raises(FileNotFoundError, match="v0002"):
        DeployRequest.of_version(registry, 2)


def _bad(msg_type: MessageType, fields: dict, arrays: dict | None = None) -> Message:
    return _wire(Message(msg_type, fields, arrays or {}))


OBS_FIELDS = {"episode": 0, "frame": 0, "task": "t", "names": ["a"], "sim_task": ""}
SAVED_FIELDS = {"episode_index": 1, "length": 2, "data_type": "auto", "success": True, "root": "/d"}


@pytest.mark.parametrize(
    ("decoder", "msg", "error"),
    [
        (Observation, _bad(OBS, {**OBS_FIELDS, "frame": "7"}), "observation.fields.frame: '7'"),
        (Observation, _bad(OBS, OBS_FIELDS, {"state": np.zeros(2, np.float32)}), "observation.arrays.state"),
        (Observation, _bad(MessageType.EPISODE_SAVED, SAVED_FIELDS), "type: expected observation"),
        (TeleopState, _bad(MessageType.TELEOP_STATE, {"names": "ab"}), "teleop_state.fields.names: 'ab'"),
        (TeleopState, _bad(MessageType.TELEOP_STATE, {"keys": [1]}), "teleop_state.fields.keys: [1]"),
        (TeleopState, _bad(MessageType.TELEOP_STATE, {"keys": {"estop": "x"}}), "teleop_state.fields.keys"),
        (
            EpisodeStarted,
            _bad(MessageType.EPISODE_STARTED, {"episode": True, "task": "t"}),
            "fields.episode: True",
        ),
        (EpisodeSaved, _bad(MessageType.EPISODE_SAVED, {**SAVED_FIELDS, "success": 1}), "fields.success: 1"),
        (EpisodeSaved, _bad(MessageType.EPISODE_SAVED, {**SAVED_FIELDS, "root": None}), "fields.root: None"),
        (PolicySwapped, _bad(MessageType.POLICY_SWAPPED, {"version": 2, "frame": 1.5}), "fields.frame: 1.5"),
        (
            DeployRequest,
            _bad(MessageType.DEPLOY, {"version": 0}),
            "deploy.version: 0 is not a positive integer",
        ),
        (
            DeployRequest,
            _bad(MessageType.DEPLOY, {"version": 1, "path": ""}),
            "deploy.path: '' is not a path",
        ),
        (
            DeployRequest,
            _bad(MessageType.DEPLOY, {"version": 1, "path": "/p", "sha256": "ab"}),
            "deploy.sha256: 'ab'",
        ),
        (DeployRequest, _bad(MessageType.TELEOP_STATE, {}), "type: expected deploy, got teleop_state"),
        (DeployReply, _bad(MessageType.DEPLOY_REPLY, {"status": "ok"}), "deploy_reply.status: 'ok'"),
        (
            DeployReply,
            _bad(MessageType.DEPLOY_REPLY, {"status": "swapped", "version": "2"}),
            "deploy_reply.version: '2'",
        ),
        (
            DeployReply,
            _bad(MessageType.DEPLOY_REPLY, {"status": "rejected", "reason": 3}),
            "deploy_reply.reason: 3",
        ),
    ],
)
def test_payload_decode_error_names_the_field_and_value(decoder, msg, error):
    with pytest.raises(ProtocolError) as e:
        decoder.from_message(msg)
    assert error in str(e.value)


def test_send_deploy_returns_the_typed_reply(ctx):
    address = "inproc://test-send-deploy"
    server = ctx.socket(zmq.REP)
    server.bind(address)
    got: list[DeployRequest] = []

    def serve():
        got.append(DeployRequest.from_message(decode(server.recv_multipart())))
        server.send_multipart(encode(DeployReply("queued", 1, version=2).to_message()))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        reply = send_deploy(ctx, address, DeployRequest(2, Path("/models/v0002"), SHA), timeout_s=5)
    finally:
        thread.join(timeout=5)
        server.close()
    assert got == [DeployRequest(2, Path("/models/v0002"), SHA)]
    assert reply == DeployReply("queued", 1, version=2) and reply.accepted
