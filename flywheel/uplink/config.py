"""The uplink's configuration (`flywheel uplink --help`)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.protocol import MAX_ARRAY_BYTES
from flywheel.contracts.transfer import check_arm


def default_arm_name() -> str:
    """This host's name, reduced to what an arm name may hold ([A-Za-z0-9_-], at most 64)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-")[:64]
    return name or "arm"


@dataclass
class UplinkConfig:
    # The trainer's fleet endpoint (its --fleet.bind), e.g. tcp://gpu-box:5560. The arm connects
    # out to it: an arm behind NAT or on a laptop works. Beyond loopback it needs --wire.keys_dir.
    trainer: str = "tcp://127.0.0.1:5560"
    # This arm's name on the trainer (its inbox folder): [A-Za-z0-9_-]{1,64}; default the host name.
    arm: str = field(default_factory=default_arm_name)
    # The dataset the local rollout daemon records into (read only, never modified).
    dataset_root: Path = Path("outputs/datasets/flywheel")
    # Where fetched registry versions are kept (v0001, ...; .partial-v0001 while fetching).
    cache: Path = Path("outputs/uplink/models")
    # The local daemon's deploy endpoint (wire.deploy) and the CurveZMQ keys (wire.keys_dir).
    wire: WireConfig = field(default_factory=WireConfig)
    # This uplink's key pair in wire.keys_dir (`flywheel keys --identities=NAME` makes more).
    identity: str = "uplink"
    # Poll the trainer this often (seconds) when there is nothing to send.
    poll_s: float = 1.0
    # A request without a reply this long is sent again on a new socket.
    timeout_s: float = 10.0
    # How long the local daemon may take to validate and swap a deploy.
    deploy_timeout_s: float = 60.0
    # Bytes per chunk (episode files sent, weights fetched).
    chunk_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        check_arm(self.arm, "arm")
        if not 0 < self.chunk_bytes <= MAX_ARRAY_BYTES:
            raise ValueError(f"chunk_bytes: {self.chunk_bytes} is not in 1..{MAX_ARRAY_BYTES}")
        for name in ("poll_s", "timeout_s", "deploy_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: {getattr(self, name)} must be positive")
