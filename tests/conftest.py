"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest
import torch

from flywheel.cli import main as flywheel_main
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


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory):
    """Two short episodes the rollout daemon recorded on the sim in lockstep (read only: the training
    tests share it)."""
    root = tmp_path_factory.mktemp("sim") / "ds"
    code = flywheel_main([
        "rollout", "--robot", "sim", "--local_teleop=true", "--fps=0", "--episodes=2", "--episode_time_s=1",
        f"--dataset.root={root}", f"--wire.daemon_events={free_address()}", f"--wire.deploy={free_address()}",
    ])  # fmt: skip
    assert code == 0
    return root
