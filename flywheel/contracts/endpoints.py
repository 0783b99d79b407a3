"""Where the flywheel's processes meet: the ZeroMQ addresses of the wire protocol (docs/protocol.md)
and the CurveZMQ keys that guard them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from flywheel.contracts.security import Security


@dataclass
class WireConfig:
    """ZeroMQ addresses. Loopback by default; see docs/protocol.md."""

    # The rollout daemon publishes observations and episode events here.
    daemon_events: str = "tcp://127.0.0.1:5555"
    # The teleop process publishes operator actions, pedal and keys here.
    teleop_state: str = "tcp://127.0.0.1:5556"
    # The rollout daemon takes deploy / rollback requests here (request/reply).
    deploy: str = "tcp://127.0.0.1:5557"
    # With keys: the name of the key the process at `deploy` must hold. `daemon` for a rollout daemon;
    # `policy_server` when the policy runs in `flywheel serve` (point `deploy` at its deploy address).
    deploy_key: str = "daemon"
    # CurveZMQ keys (made by `flywheel keys`). Without them every socket must bind to loopback;
    # with them, only processes whose public key is in <keys_dir>/public are heard.
    keys_dir: Path | None = None

    def security(self, identity: str) -> Security | None:
        return None if self.keys_dir is None else Security(Path(self.keys_dir), identity)

    @classmethod
    def in_process(cls, name: str) -> WireConfig:
        """ZeroMQ inproc:// addresses, unique per call: a daemon run inside another program
        (evaluation, the demo, benchmarks) opens no TCP port and can run beside a live one."""
        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        return cls(f"inproc://{tag}-events", f"inproc://{tag}-teleop", f"inproc://{tag}-deploy")
