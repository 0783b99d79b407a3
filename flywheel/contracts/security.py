"""Who may talk to the flywheel's sockets.

By default every socket binds to loopback, and binding any other interface is refused unless
CurveZMQ keys are configured (`--wire.keys_dir`, made by `flywheel keys`). With keys, every
binding socket is a CURVE server that accepts only clients whose public key is in
`<keys_dir>/public/`, and every connecting socket authenticates with its own key pair and checks
the server's. Keys are ZeroMQ's certificate files (zmq.auth), never pickles.

    keys_dir/public/<name>.key            public certificates (copy these between machines)
    keys_dir/private/<name>.key_secret    a process's own secret certificate (keep it there)
"""

from __future__ import annotations

import re
import shutil
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

IDENTITIES = ("daemon", "teleop", "trainer", "operator")  # operator: `flywheel deploy` by hand
# Any further identity (`flywheel keys --identities=uplink,arm-kitchen`): an arm host's uplink, say.
_IDENTITY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LOOPBACK_PREFIXES = ("tcp://127.", "tcp://localhost:", "tcp://[::1]:", "inproc://", "ipc://")

# Per context (weakly held: a destroyed context's id may be reused by a new one, which must not
# inherit "already authenticated").
_authenticators: weakref.WeakKeyDictionary[zmq.Context, ThreadAuthenticator] = weakref.WeakKeyDictionary()
_auth_lock = threading.Lock()


def is_loopback(address: str) -> bool:
    return address.startswith(_LOOPBACK_PREFIXES)


def make_keys(keys_dir: Path, names: tuple[str, ...] = IDENTITIES) -> list[Path]:
    """Create a key pair per process identity; existing keys are kept (never overwritten)."""
    for name in names:
        if not _IDENTITY.fullmatch(name):
            raise ValueError(f"identities: {name!r} is not a key name ([A-Za-z0-9_-]{{1,64}})")
    public, private = Path(keys_dir) / "public", Path(keys_dir) / "private"
    public.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    private.chmod(0o700)
    made = []
    for name in names:
        if (private / f"{name}.key_secret").exists():
            continue
        public_file, secret_file = zmq.auth.create_certificates(str(private), name)
        shutil.move(public_file, public / f"{name}.key")
        Path(secret_file).chmod(0o600)
        made.append(Path(secret_file))
    return made


@dataclass(frozen=True)
class Security:
    keys_dir: Path
    identity: str  # this process's key pair

    def _own(self) -> tuple[bytes, bytes]:
        path = self.keys_dir / "private" / f"{self.identity}.key_secret"
        if not path.exists():
            raise FileNotFoundError(
                f"wire.keys_dir: no secret key {path}; run `flywheel keys --keys_dir={self.keys_dir}`"
            )
        public, secret = zmq.auth.load_certificate(str(path))
        return public, secret

    def _public(self, name: str) -> bytes:
        path = self.keys_dir / "public" / f"{name}.key"
        if not path.exists():
            raise FileNotFoundError(f"wire.keys_dir: no public key {path} for the {name!r} server")
        public, _ = zmq.auth.load_certificate(str(path))
        return public


def secure_server(socket: zmq.Socket, address: str, security: Security | None) -> None:
    """Call before `bind`: loopback only without keys; with keys, a CURVE server for known clients."""
    if security is None:
        if not is_loopback(address):
            raise ValueError(
                f"wire: {address} is not a loopback address; binding it needs CurveZMQ keys "
                "(flywheel keys, then --wire.keys_dir=DIR)"
            )
        return
    _start_authenticator(socket.context, security.keys_dir / "public")
    public, secret = security._own()
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_server = True


def secure_client(socket: zmq.Socket, security: Security | None, server: str) -> None:
    """Call before `connect`: authenticate with our key pair and check the server's key."""
    if security is None:
        return
    public, secret = security._own()
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey = security._public(server)


def _start_authenticator(ctx: zmq.Context, public_dir: Path) -> None:
    """One ZAP authenticator per context, accepting the clients whose keys are in public_dir."""
    with _auth_lock:
        if ctx in _authenticators:
            return
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(public_dir))
        _authenticators[ctx] = auth
