"""Loopback addresses for tests: every socket a test opens is on 127.0.0.1."""

import socket

import zmq

from flywheel.contracts import security


def free_address() -> str:
    """A tcp://127.0.0.1 address with a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def destroy_keyed_context(ctx: zmq.Context) -> None:
    """Stop the ZAP authenticator thread a CurveZMQ server started in `ctx`, then destroy `ctx`."""
    auth = security._authenticators.pop(ctx, None)
    if auth is not None:
        auth.stop()
    ctx.destroy(linger=0)
