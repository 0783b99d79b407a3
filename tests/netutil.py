"""Loopback addresses for tests: every socket a test opens is on 127.0.0.1."""

import socket


def free_address() -> str:
    """A tcp://127.0.0.1 address with a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"
