"""The uplink's requests to the trainer: one REQ socket, replaced after any timeout ("Lazy Pirate",
ZeroMQ guide ch. 4). Every fleet request is idempotent, so the caller simply sends it again."""

from __future__ import annotations

import logging

import zmq

from flywheel.contracts.fleet import parse_reply
from flywheel.contracts.protocol import MAX_ARRAY_BYTES, MAX_HEADER_BYTES, Payload, decode, encode
from flywheel.contracts.security import Security, secure_client

log = logging.getLogger(__name__)


class FleetClient:
    def __init__(self, ctx: zmq.Context, address: str, security: Security | None, timeout_s: float):
        self._ctx, self.address, self._security, self.timeout_s = ctx, address, security, timeout_s
        self._socket: zmq.Socket | None = None
        self.timeouts = 0

    def call(self, payload: Payload, expected: type):
        """Send `payload`, return the typed reply `expected` (FleetState, ChunkAck, WeightsChunk).
        TimeoutError when none comes within timeout_s (the socket is then replaced), FleetRefused
        when the trainer refuses, ProtocolError when its reply is malformed."""
        if self._socket is None:
            self._socket = self._open()
        msg = payload.to_message()
        self._socket.send_multipart(encode(msg), copy=False)
        if not self._socket.poll(timeout=int(self.timeout_s * 1000)):
            self.close()  # a REQ socket without its reply can send nothing more: take a new one
            self.timeouts += 1
            raise TimeoutError(f"{self.address}: no reply to {msg.type} within {self.timeout_s:g} s")
        return parse_reply(decode(self._socket.recv_multipart()), expected)

    def _open(self) -> zmq.Socket:
        socket = self._ctx.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES + MAX_ARRAY_BYTES)
        secure_client(socket, self._security, server="trainer")
        socket.connect(self.address)
        return socket

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
