"""benchmarks/netns.py: namespaces joined by veths; ZeroMQ across them, isolation, cut, delay, cleanup."""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time

import pytest

from benchmarks.netns import (
    PREFIX,
    DelayUnavailable,
    Topology,
    list_namespaces,
    sweep_stale,
)
from tests.netns import topology_factory

pytestmark = pytest.mark.timeout(60)

PORT = 5555  # every namespace has its own port space: no collisions with the host or other tests

SERVER = """
import sys, zmq
ctx = zmq.Context()
rep = ctx.socket(zmq.REP)
rep.bind(sys.argv[1])
print("ready", flush=True)
while True:
    rep.send(b"echo:" + rep.recv())
"""

# Lazy Pirate client (zguide ch. 4): one REQ socket; each stdin line "<timeout_ms> <payload>" sends one
# request; on timeout the socket is closed (linger 0) and a fresh one is connected for the next one.
# Prints one JSON line per request: {"ok": bool, "reply": str|None, "rtt": seconds, "socket": n}.
CLIENT = """
import json, sys, time, zmq
endpoint = sys.argv[1]
ctx = zmq.Context()
n = 0
def fresh():
    global n
    n += 1
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s
req = fresh()
for line in sys.stdin:
    timeout_ms, payload = line.split(maxsplit=1)
    t0 = time.monotonic()
    req.send(payload.strip().encode())
    if req.poll(int(timeout_ms), zmq.POLLIN):
        reply = req.recv().decode()
        print(json.dumps({"ok": True, "reply": reply, "rtt": time.monotonic() - t0, "socket": n}), flush=True)
    else:
        used = n
        req.close()
        req = fresh()
        lost = {"ok": False, "reply": None, "rtt": time.monotonic() - t0, "socket": used}
        print(json.dumps(lost), flush=True)
"""


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the process's stdout (binary pipe), bounded in time."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line from {proc.args} within {timeout} s (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
            raise AssertionError(f"{proc.args} ended (rc {proc.poll()}): {buf!r} {err}")
        buf += chunk
    return buf.decode().strip()


class Client:
    def __init__(self, net: Topology, host: str, endpoint: str, script: str):
        self.proc = net.run(
            host,
            [sys.executable, script, endpoint],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def request(self, payload: str, timeout_ms: int, wait: float | None = None) -> dict:
        self.proc.stdin.write(f"{timeout_ms} {payload}\n".encode())
        self.proc.stdin.flush()
        return json.loads(read_line(self.proc, wait or timeout_ms / 1000 + 10))


@pytest.fixture
def make_topology(request):
    return topology_factory(request)


@pytest.fixture
def scripts(tmp_path):
    server, client = tmp_path / "server.py", tmp_path / "client.py"
    server.write_text(SERVER)
    client.write_text(CLIENT)
    return str(server), str(client)


def start_server(net: Topology, bind: str, script: str) -> subprocess.Popen:
    proc = net.run(net.hub, [sys.executable, script, bind], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert read_line(proc, 15) == "ready"
    return proc


def ours() -> list[str]:
    return [n for n in list_namespaces() if n.startswith(PREFIX)]


def test_layout_addresses_and_loopback(make_topology):
    net = make_topology(["arm0", "arm1"], hub="trainer")
    assert net.hosts == ["trainer", "arm0", "arm1"]
    assert net.address("arm0") == "10.213.0.2" and net.address("arm1", toward="trainer") == "10.213.1.2"
    assert net.address("trainer", toward="arm1") == "10.213.1.1"
    with pytest.raises(ValueError):
        net.address("trainer")  # two links: ambiguous
    assert set(net.namespaces) <= set(ours())
    for host in net.hosts:
        addrs = net.check_output(host, ["ip", "-4", "-o", "addr"], timeout=10)
        assert "127.0.0.1" in addrs and "lo" in addrs
    # The host's own namespace has none of the helper's addresses or devices.
    assert (
        "10.213."
        not in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    )
    assert (
        f"fw{net.tag}"
        not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
    )


def test_zmq_across_veth_and_isolation(make_topology, scripts):
    server_py, client_py = scripts
    net = make_topology(["arm0", "arm1"], hub="trainer")
    start_server(net, f"tcp://{net.address('trainer', toward='arm0')}:{PORT}", server_py)
    client = Client(net, "arm0", f"tcp://{net.address('trainer', toward='arm0')}:{PORT}", client_py)
    hello = client.request("hello", 5000)
    assert hello["ok"] and hello["reply"] == "echo:hello" and hello["socket"] == 1
    # Leaves cannot reach each other (no route; the hub does not forward), nor the hub's address on
    # another link.
    probe = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(1)\n"
        "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
        "except ConnectionRefusedError as e:\n print('refused', e)\n"
        "except OSError as e:\n print('unreachable', e)\n"
    )
    for target in (net.address("arm1"), net.address("trainer", toward="arm1")):
        out = net.check_output("arm0", [sys.executable, "-c", probe, target, str(PORT)], timeout=10)
        assert out.startswith("unreachable"), (target, out)
    # The hub's loopback is its own: a server bound to 127.0.0.1 in the hub is not the leaf's 127.0.0.1.
    start_server(net, f"tcp://127.0.0.1:{PORT + 1}", server_py)
    out = net.check_output("arm0", [sys.executable, "-c", probe, "127.0.0.1", str(PORT + 1)], timeout=10)
    assert out.startswith("refused"), out
    local = Client(net, "trainer", f"tcp://127.0.0.1:{PORT + 1}", client_py)
    assert local.request("lo", 5000)["reply"] == "echo:lo"


def test_cut_times_out_and_restore_recovers_lazy_pirate(make_topology, scripts):
    server_py, client_py = scripts
    net = make_topology(["arm0"], hub="trainer")
    endpoint = f"tcp://{net.address('trainer')}:{PORT}"
    start_server(net, endpoint, server_py)
    client = Client(net, "arm0", endpoint, client_py)
    assert client.request("before", 5000)["reply"] == "echo:before"

    net.cut("arm0")
    lost = client.request("during", 500)
    # Timed out after 500 ms; the client closed that socket and opened a fresh one.
    assert lost["ok"] is False and lost["rtt"] >= 0.5 and lost["socket"] == 1

    net.restore("arm0")
    back = client.request("after", 5000)
    assert back["ok"] is True and back["reply"] == "echo:after"
    assert back["socket"] == 2  # the reopened REQ socket, not the one stuck with the unanswered request


def test_delay_adds_round_trip_time(make_topology, scripts):
    server_py, client_py = scripts
    net = make_topology(["arm0", "arm1"], hub="trainer")
    endpoint = f"tcp://{net.address('trainer', toward='arm0')}:{PORT}"
    start_server(net, endpoint, server_py)
    client = Client(net, "arm0", endpoint, client_py)
    # Connect before the delay, so that the measured round trip below is one exchange, no handshakes.
    assert client.request("warm", 5000)["ok"]
    try:
        mechanism = net.delay("arm0", 100)
    except DelayUnavailable as e:
        pytest.skip(str(e))
    assert mechanism in ("netem", "relay")
    slow = client.request("slow", 5000)
    assert slow["ok"] and slow["reply"] == "echo:slow"
    assert slow["rtt"] >= 0.2, (mechanism, slow)  # 100 ms each way; a lower bound only, not a speed target

    # The delayed link still works after the delay changes, through a cut/restore, and once removed.
    assert net.delay("arm0", 150) == mechanism
    net.cut("arm0")
    assert client.request("cut", 300)["ok"] is False
    net.restore("arm0")
    slower = client.request("slower", 5000)
    assert slower["ok"] and slower["rtt"] >= 0.3, (mechanism, slower)
    assert net.delay("arm0", None) == "none"
    assert client.request("plain", 5000)["reply"] == "echo:plain"


def test_cleanup_on_failure_and_leftovers(make_topology, scripts):
    server_py, _ = scripts
    live = make_topology(1)  # skips here where namespaces cannot be made
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Topology(1) as net:
        names = net.namespaces
        net.run(net.hub, [sys.executable, server_py, f"tcp://{net.address(net.hub)}:{PORT}"])
        assert set(names) <= set(ours())
        raise RuntimeError("boom")
    assert not set(names) & set(ours())

    # A leftover of a crashed run (prefix, nobody holds its lock) is swept; a live topology is left alone.
    stale = f"{PREFIX}{secrets.token_hex(3)}-hub"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        sweep_stale()  # (a parallel run's sweep may have removed it first)
        assert stale not in ours()
        assert set(live.namespaces) <= set(ours())
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=10)
    live.close()
    assert not set(live.namespaces) & set(ours())
