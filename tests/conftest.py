"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest

from tests.netutil import free_address


@pytest.fixture
def free_tcp_address() -> str:
    """A loopback ZeroMQ address on a port that was free a moment ago: "tcp://127.0.0.1:PORT"."""
    return free_address()
