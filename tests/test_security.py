"""Sockets bind to loopback unless CurveZMQ keys are configured; with keys, strangers are not heard."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from flywheel.contracts.messages import DeployReply, EpisodeSaved
from flywheel.contracts.protocol import LatestValueSubscriber, MessageType, Publisher, request
from flywheel.contracts.security import Security, is_loopback, make_keys
from flywheel.rollout.hotswap import HotSwap
from tests.netutil import free_address


@pytest.fixture
def keys(tmp_path):
    make_keys(tmp_path / "keys")
    make_keys(tmp_path / "stranger", names=("trainer",))  # a valid key pair nobody authorised
    return tmp_path


def test_binding_beyond_loopback_without_keys_is_refused():
    ctx = zmq.Context()
    try:
        with pytest.raises(ValueError, match=r"wire: tcp://0\.0\.0\.0:5999 is not a loopback address"):
            Publisher(ctx, "tcp://0.0.0.0:5999")
        assert (
            is_loopback("tcp://127.0.0.1:1")
            and is_loopback("inproc://x")
            and not is_loopback("tcp://10.0.0.1:1")
        )
    finally:
        ctx.destroy(linger=0)


def test_make_keys_never_overwrites(tmp_path):
    first = make_keys(tmp_path)
    before = (tmp_path / "private" / "daemon.key_secret").read_bytes()
    assert len(first) == 4 and make_keys(tmp_path) == []
    assert (tmp_path / "private" / "daemon.key_secret").read_bytes() == before


def _received(ctx, address, security) -> bool:
    sub = LatestValueSubscriber(ctx, [address], [MessageType.EPISODE_SAVED], security=security).start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if sub.latest(MessageType.EPISODE_SAVED) is not None:
                return True
            time.sleep(0.02)
        return False
    finally:
        sub.stop()


def test_curve_publisher_is_heard_only_by_authorised_keys(keys):
    ctx = zmq.Context()
    address = free_address()
    publisher = Publisher(ctx, address, Security(keys / "keys", "daemon"))
    stop = False

    def keep_publishing():
        while not stop:
            publisher.send(EpisodeSaved(1, 10, "auto", True, "/tmp/ds"))
            time.sleep(0.02)

    thread = threading.Thread(target=keep_publishing)
    thread.start()
    try:
        assert _received(ctx, address, Security(keys / "keys", "trainer"))
        stranger = Security(keys / "stranger", "trainer")  # its server key file is missing: copy the daemon's
        (keys / "stranger" / "public" / "daemon.key").write_bytes(
            (keys / "keys/public/daemon.key").read_bytes()
        )
        assert not _received(ctx, address, stranger)
        assert not _received(ctx, address, None)  # plain ZeroMQ, no CURVE
    finally:
        stop = True
        thread.join()
        publisher.close()
        ctx.destroy(linger=0)


def test_deploy_endpoint_answers_only_authorised_requests(keys):
    ctx = zmq.Context()
    address = free_address()
    server = HotSwap(ctx, address, load=None, observe=lambda: (None, ""), action_dim=4, current=None,
                     security=Security(keys / "keys", "daemon")).start()  # fmt: skip
    try:
        reply = request(
            ctx,
            address,
            MessageType.DEPLOY,
            {"version": 0},  # a bad body, by hand: refused, but only an authorised peer hears why
            5,
            Security(keys / "keys", "operator"),
            connect_timeout_s=1.0,  # the connect check sees the transport before the Curve handshake
        )
        reply = DeployReply.from_message(reply)
        assert reply.status == "rejected" and "deploy.version" in reply.reason
        (keys / "stranger" / "public" / "daemon.key").write_bytes(
            (keys / "keys/public/daemon.key").read_bytes()
        )
        with pytest.raises(TimeoutError):
            request(
                ctx, address, MessageType.DEPLOY, {"version": 0}, 1, Security(keys / "stranger", "trainer")
            )
    finally:
        server.stop()
        ctx.destroy(linger=0)
