"""Hosts on one machine for tests that cross real network boundaries: namespaces joined by veth pairs.

A `Topology` is a hub namespace (e.g. the trainer host) and N leaf namespaces (e.g. arm hosts); each
leaf is joined to the hub by its own veth pair on its own /30: leaf i has 10.213.<i>.2, the hub side of
that link 10.213.<i>.1. Leaves cannot reach one another (no routes between links, no forwarding in the
hub). Loopback is up in every namespace.

    with Topology(leaves=["arm0", "arm1"], hub="trainer") as net:
        server = net.run("trainer", [sys.executable, "server.py", net.address("trainer", toward="arm0")])
        net.check_output("arm0", ["python", "-c", "..."])
        net.cut("arm0"); ...; net.restore("arm0")
        net.delay("arm0", 100)  # +100 ms each way (netem, or a userspace relay where there is no netem)

Rules kept here:
- only addresses in 10.213.0.0/16, only on interfaces made here, only inside namespaces made here; no
  device is ever created in (or moved through) the caller's namespace; the host's interfaces are
  never touched;
- every namespace is named "fwnetns-<tag>-<host>" with a random tag, so parallel runs never collide;
  while a topology lives it holds an flock on /run/fwnetns-locks/<tag>.lock. A namespace with the
  prefix whose lock nobody holds is a leftover of a crashed run: it is removed (processes in it
  killed) when the next topology is made (`sweep_stale`);
- `close()` (context manager exit, fixture finalizer, atexit) kills every process in the namespaces
  and deletes them, which deletes their veths; it never raises and is idempotent;
- every subprocess call has a timeout.

Used by the tests that cross hosts and by `flywheel bench` (remote inference with added delay);
tests/netns.py wraps it in a pytest fixture that skips where namespaces cannot be made.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import heapq
import os
import re
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Sequence

PREFIX = "fwnetns-"
LOCK_DIR = "/run/fwnetns-locks"
SUBNET = "10.213"
CMD_TIMEOUT = 10.0

_NAME_RE = re.compile(rf"^{re.escape(PREFIX)}([0-9a-f]+)-")

# linux/if_tun.h
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no `ip`, no permission); the message is the actual error."""


class DelayUnavailable(RuntimeError):
    """Neither netem nor a TUN device is available to add delay; the message is the actual error."""


class NetnsError(RuntimeError):
    """An `ip`/`tc` command failed."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.argv)!s} -> {returncode}: {self.stderr}")


def _cmd(
    argv: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        raise NetnsError(argv, None, f"timed out after {timeout} s") from e
    except OSError as e:
        raise NetnsError(argv, None, str(e)) from e
    if check and proc.returncode != 0:
        raise NetnsError(argv, proc.returncode, proc.stderr or proc.stdout)
    return proc


def list_namespaces() -> list[str]:
    """Names in `ip netns list` (every namespace, not only this helper's)."""
    out = _cmd(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL every process whose network namespace is `ns` (never this process)."""
    for _ in range(3):
        proc = _cmd(["ip", "netns", "pids", ns], check=False)
        pids = [int(p) for p in proc.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    _cmd(["ip", "netns", "del", ns], check=False)


def _try_lock(tag: str) -> int | None:
    """An fd holding the tag's exclusive lock, or None if someone else holds it."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(os.path.join(LOCK_DIR, f"{tag}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def sweep_stale() -> list[str]:
    """Delete this helper's namespaces left by crashed runs (prefix, lock not held); returns their names."""
    removed: list[str] = []
    by_tag: dict[str, list[str]] = {}
    for ns in list_namespaces():
        m = _NAME_RE.match(ns)
        if m:
            by_tag.setdefault(m.group(1), []).append(ns)
    for tag, names in by_tag.items():
        fd = _try_lock(tag)
        if fd is None:  # a live topology (this process or another) holds it
            continue
        try:
            for ns in names:
                _delete_namespace(ns)
                removed.append(ns)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(LOCK_DIR, f"{tag}.lock"))
        finally:
            os.close(fd)
    return removed


def _open_tun_in(ns: str, ifname: str) -> int:
    """Create a TUN device `ifname` inside namespace `ns`; return its fd (the device lives as long as it).

    The calling process never changes namespace: a short-lived thread joins `ns` (setns affects only
    that thread), opens /dev/net/tun there and exits."""
    result: dict = {}

    def work() -> None:
        try:
            nsfd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.setns(nsfd, os.CLONE_NEWNET)
            finally:
                os.close(nsfd)
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", ifname.encode(), _IFF_TUN | _IFF_NO_PI))
            except BaseException:
                os.close(fd)
                raise
            result["fd"] = fd
        except BaseException as e:  # handed to the caller
            result["error"] = e

    thread = threading.Thread(target=work, name=f"tun-open-{ifname}", daemon=True)
    thread.start()
    thread.join(CMD_TIMEOUT)
    if "fd" in result:
        return result["fd"]
    err = result.get("error")
    raise DelayUnavailable(f"cannot create TUN device {ifname} in {ns}: {err or 'timed out'}")


class _Relay:
    """Moves IP packets between two TUN fds, each after `delay_s`: a userspace netem (no sch_netem)."""

    MAX_QUEUED = 20000

    def __init__(self, fd_a: int, fd_b: int, delay_s: float):
        self.fds = (fd_a, fd_b)
        self.delay_s = delay_s
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="netns-delay-relay", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        fd_a, fd_b = self.fds
        other = {fd_a: fd_b, fd_b: fd_a}
        sel = selectors.DefaultSelector()
        sel.register(fd_a, selectors.EVENT_READ)
        sel.register(fd_b, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        heap: list[tuple[float, int, int, bytes]] = []
        seq = 0
        try:
            while True:
                timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else None
                for key, _ in sel.select(timeout):
                    if key.fd == self._stop_r:
                        return
                    for _ in range(256):
                        try:
                            packet = os.read(key.fd, 65536)
                        except OSError:  # EAGAIN: drained; EIO etc.: device down
                            break
                        if not packet:
                            break
                        if len(heap) < self.MAX_QUEUED:
                            seq += 1
                            heapq.heappush(
                                heap, (time.monotonic() + self.delay_s, seq, other[key.fd], packet)
                            )
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    _, _, out, packet = heapq.heappop(heap)
                    with contextlib.suppress(OSError):  # device down (cut): the packet is lost, as on a wire
                        os.write(out, packet)
        finally:
            sel.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(CMD_TIMEOUT)
        for fd in (*self.fds, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Topology:
    """A hub namespace and leaf namespaces, each joined to the hub by its own veth pair (module doc)."""

    def __init__(self, leaves: int | Sequence[str] = 2, hub: str = "hub"):
        names = [f"leaf{i}" for i in range(leaves)] if isinstance(leaves, int) else list(leaves)
        if not names or len(names) > 250:
            raise ValueError("between 1 and 250 leaves")
        if len(set([*names, hub])) != len(names) + 1:
            raise ValueError("host names must be distinct")
        for n in [hub, *names]:
            if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", n):
                raise ValueError(f"host name {n!r}: letters, digits, underscore")
        self.hub = hub
        self.leaves = names
        self.tag = secrets.token_hex(3)
        self._index = {leaf: i for i, leaf in enumerate(names)}
        self._procs: list[subprocess.Popen] = []
        self._relays: dict[str, tuple[_Relay, str, str]] = {}  # leaf -> (relay, hub tun, leaf tun)
        self._delays: dict[str, tuple[str, int]] = {}  # leaf -> (mechanism, ms)
        self._made: list[str] = []
        self._lock_fd: int | None = None
        self._closed = False

        if shutil.which("ip") is None:
            raise NetnsUnavailable("`ip` (iproute2) is not installed")
        try:
            self._lock_fd = _try_lock(self.tag)
        except OSError as e:
            raise NetnsUnavailable(f"cannot write the lock {LOCK_DIR}: {e}") from e
        atexit.register(self.close)
        try:
            with contextlib.suppress(NetnsError):
                sweep_stale()
            try:  # the steps that need privileges: failing here means "cannot make namespaces"
                self._add_namespace(hub)
                _cmd(["ip", "netns", "exec", self.ns(hub), "ip", "link", "set", "lo", "up"])
            except NetnsError as e:
                raise NetnsUnavailable(str(e)) from e
            for leaf in names:
                self._add_namespace(leaf)
                _cmd(["ip", "-n", self.ns(leaf), "link", "set", "lo", "up"])
                i = self._index[leaf]
                hub_dev, leaf_dev = self._veth(leaf)
                # Both ends are created directly inside their namespaces: nothing ever appears in ours.
                _cmd(
                    [
                        "ip",
                        "link",
                        "add",
                        "name",
                        hub_dev,
                        "netns",
                        self.ns(hub),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        leaf_dev,
                        "netns",
                        self.ns(leaf),
                    ]
                )
                _cmd(["ip", "-n", self.ns(hub), "addr", "add", f"{SUBNET}.{i}.1/30", "dev", hub_dev])
                _cmd(["ip", "-n", self.ns(leaf), "addr", "add", f"{SUBNET}.{i}.2/30", "dev", leaf_dev])
                _cmd(["ip", "-n", self.ns(hub), "link", "set", hub_dev, "up"])
                _cmd(["ip", "-n", self.ns(leaf), "link", "set", leaf_dev, "up"])
        except BaseException:
            self.close()
            raise

    # -- names and addresses --

    @property
    def hosts(self) -> list[str]:
        """Host names: the hub first, then the leaves."""
        return [self.hub, *self.leaves]

    def ns(self, host: str) -> str:
        """The namespace name of `host` (for `ip netns exec` by hand)."""
        self._check_host(host)
        return f"{PREFIX}{self.tag}-{host}"

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(h) for h in self.hosts]

    def address(self, host: str, toward: str | None = None) -> str:
        """IPv4 address of `host` on its link toward `toward` (a leaf has one link; the hub one per leaf)."""
        self._check_host(host)
        if host == self.hub:
            if toward is None:
                if len(self.leaves) != 1:
                    raise ValueError("the hub has one address per leaf: pass toward=<leaf>")
                toward = self.leaves[0]
            self._check_leaf(toward)
            return f"{SUBNET}.{self._index[toward]}.1"
        if toward not in (None, self.hub):
            raise ValueError(f"{host} is linked only to {self.hub}")
        return f"{SUBNET}.{self._index[host]}.2"

    def _veth(self, leaf: str) -> tuple[str, str]:
        i = self._index[leaf]
        return f"fw{self.tag}l{i}", f"fw{self.tag}h"  # hub end, leaf end (<= 15 characters)

    def _check_host(self, host: str) -> None:
        if host != self.hub and host not in self._index:
            raise KeyError(f"unknown host {host!r}; hosts: {self.hosts}")

    def _check_leaf(self, leaf: str) -> None:
        if leaf not in self._index:
            raise KeyError(f"unknown leaf {leaf!r}; leaves: {self.leaves}")

    def _add_namespace(self, host: str) -> None:
        name = self.ns(host)
        _cmd(["ip", "netns", "add", name])
        self._made.append(name)

    # -- processes --

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed to run inside `host`."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Start `argv` inside `host` (its own process group); killed by `close()` if still running."""
        if self._closed:
            raise RuntimeError("topology is closed")
        popen_kwargs.setdefault("start_new_session", True)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.exec_argv(host, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def check_output(self, host: str, argv: Sequence[str], timeout: float = 30.0, **run_kwargs) -> str:
        """Run `argv` inside `host` to completion (bounded by `timeout`) and return its stdout as text.

        Raises subprocess.CalledProcessError (with stderr) on a non-zero exit,
        subprocess.TimeoutExpired on timeout."""
        run_kwargs.setdefault("stdin", subprocess.DEVNULL)
        run_kwargs.setdefault("capture_output", True)
        run_kwargs.setdefault("text", True)
        return subprocess.run(self.exec_argv(host, argv), timeout=timeout, check=True, **run_kwargs).stdout

    # -- link faults --

    def cut(self, leaf: str) -> None:
        """Unplug the leaf's link: both ends down (and the delay relay, if any); addresses stay."""
        self._check_leaf(leaf)
        hub_dev, leaf_dev = self._veth(leaf)
        _cmd(["ip", "-n", self.ns(self.hub), "link", "set", hub_dev, "down"])
        _cmd(["ip", "-n", self.ns(leaf), "link", "set", leaf_dev, "down"])
        if leaf in self._relays:
            _, hub_tun, leaf_tun = self._relays[leaf]
            _cmd(["ip", "-n", self.ns(self.hub), "link", "set", hub_tun, "down"])
            _cmd(["ip", "-n", self.ns(leaf), "link", "set", leaf_tun, "down"])

    def restore(self, leaf: str) -> None:
        """Plug the leaf's link back in (both ends up; routes come back)."""
        self._check_leaf(leaf)
        hub_dev, leaf_dev = self._veth(leaf)
        _cmd(["ip", "-n", self.ns(self.hub), "link", "set", hub_dev, "up"])
        _cmd(["ip", "-n", self.ns(leaf), "link", "set", leaf_dev, "up"])
        if leaf in self._relays:
            self._relay_up(leaf)

    def delay(self, leaf: str, ms: int | None) -> str:
        """Add `ms` milliseconds each way on the leaf's link (so a round trip gains 2*ms); 0/None removes it.

        Uses `tc qdisc netem` on both veth ends; where the kernel has no netem ("Specified qdisc kind is
        unknown"), routes the link's traffic through a pair of TUN devices and a userspace relay that
        holds each packet `ms`.
        Returns the mechanism: "netem", "relay" or "none". Raises DelayUnavailable if neither works."""
        self._check_leaf(leaf)
        ms = int(ms or 0)
        if ms < 0:
            raise ValueError("delay must be >= 0")
        previous = self._delays.pop(leaf, None)
        if previous and previous[0] == "netem":
            for ns, dev in self._veth_ends(leaf):
                _cmd(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        if ms == 0:
            self._remove_relay(leaf)
            return "none"
        if leaf in self._relays:  # already relayed: change the delay in place
            self._relays[leaf][0].delay_s = ms / 1000
            self._delays[leaf] = ("relay", ms)
            return "relay"
        try:
            for ns, dev in self._veth_ends(leaf):
                _cmd(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "netem", "delay", f"{ms}ms"])
            self._delays[leaf] = ("netem", ms)
            return "netem"
        except NetnsError as netem_error:
            for ns, dev in self._veth_ends(leaf):
                _cmd(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            try:
                self._add_relay(leaf, ms)
            except (DelayUnavailable, NetnsError) as e:
                raise DelayUnavailable(f"netem: {netem_error}; relay: {e}") from e
            self._delays[leaf] = ("relay", ms)
            return "relay"

    def _veth_ends(self, leaf: str) -> list[tuple[str, str]]:
        hub_dev, leaf_dev = self._veth(leaf)
        return [(self.ns(self.hub), hub_dev), (self.ns(leaf), leaf_dev)]

    def _add_relay(self, leaf: str, ms: int) -> None:
        i = self._index[leaf]
        hub_tun, leaf_tun = f"fw{self.tag}d{i}", f"fw{self.tag}e"
        hub_fd = _open_tun_in(self.ns(self.hub), hub_tun)
        try:
            leaf_fd = _open_tun_in(self.ns(leaf), leaf_tun)
        except BaseException:
            os.close(hub_fd)
            raise
        self._relays[leaf] = (_Relay(hub_fd, leaf_fd, ms / 1000), hub_tun, leaf_tun)
        self._relay_up(leaf)

    def _relay_up(self, leaf: str) -> None:
        """TUN ends up; /32 routes (more specific than the /30) take the link's traffic through them."""
        _, hub_tun, leaf_tun = self._relays[leaf]
        hub_ip, leaf_ip = self.address(self.hub, toward=leaf), self.address(leaf)
        _cmd(["ip", "-n", self.ns(self.hub), "link", "set", hub_tun, "up"])
        _cmd(["ip", "-n", self.ns(leaf), "link", "set", leaf_tun, "up"])
        _cmd(
            [
                "ip",
                "-n",
                self.ns(self.hub),
                "route",
                "replace",
                f"{leaf_ip}/32",
                "dev",
                hub_tun,
                "src",
                hub_ip,
            ]
        )
        _cmd(["ip", "-n", self.ns(leaf), "route", "replace", f"{hub_ip}/32", "dev", leaf_tun, "src", leaf_ip])

    def _remove_relay(self, leaf: str) -> None:
        entry = self._relays.pop(leaf, None)
        if entry:
            entry[0].close()  # closing the fds deletes the TUN devices and their routes

    # -- teardown --

    def close(self) -> None:
        """Kill every process in the namespaces, delete them (and their veths). Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        for proc in self._procs:
            stop_process(proc)
        for leaf in list(self._relays):
            with contextlib.suppress(Exception):
                self._remove_relay(leaf)
        for ns in reversed(self._made):
            with contextlib.suppress(Exception):
                _delete_namespace(ns)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(LOCK_DIR, f"{self.tag}.lock"))
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Topology(tag={self.tag!r}, hub={self.hub!r}, leaves={self.leaves!r})"


def stop_process(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM the process group, SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
