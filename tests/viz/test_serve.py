"""Serving: the gRPC server and the web viewer listen on loopback only, and stop with the logger."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pytest

from flywheel.contracts.ticks import Tick
from flywheel.viz import RerunConfig, RerunLogger


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


@pytest.mark.timeout(20)
def test_serve_binds_loopback_and_close_stops_the_server():
    cfg = RerunConfig(serve=True, grpc_port=free_port(), web_port=free_port())
    logger = RerunLogger.from_config(cfg, {"x": float}, ["a"])
    try:
        assert logger.recording.url == f"rerun+http://127.0.0.1:{cfg.grpc_port}/proxy"
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg.web_port}/", timeout=5) as page:
            assert b"Rerun" in page.read()
        for port in (cfg.grpc_port, cfg.web_port):
            assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
        logger.start_episode(0, "task")
        logger.tick(Tick(0, 0, "", {"x": 1.0}, np.zeros(1, np.float32), "policy", False, 1, False))
    finally:
        logger.close()
    server = logger.recording.children[0]
    assert server.poll() is not None
    assert not listening_addresses(cfg.grpc_port)
