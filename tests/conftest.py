"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest
import torch

from tests.netutil import free_address


@pytest.fixture
def free_tcp_address() -> str:
    """A loopback ZeroMQ address on a port that was free a moment ago: "tcp://127.0.0.1:PORT"."""
    return free_address()


@pytest.fixture
def one_torch_thread():
    """Small networks on a shared 2-core machine: multi-threaded torch stalls (docs/recap.md), and
    one thread is far less slowed down when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
