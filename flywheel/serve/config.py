"""`flywheel serve`'s configuration (`flywheel serve --help`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flywheel.contracts.security import Security

SERVER_IDENTITY = "policy_server"  # its key pair's name with --wire.keys_dir (`flywheel keys --identities=`)


@dataclass
class ServedPolicyConfig:
    # A LeRobot pretrained policy folder (a registry version folder, or any pretrained_model).
    path: Path | None = None
    # The version its chunks are recorded with. Default: the registry version when `path` is a
    # registry folder (its manifest.json), else 1.
    version: int | None = None
    # `auto`: cuda when torch sees a GPU, else cpu.
    device: str = "auto"
    # Torch threads for inference (0: torch's default).
    torch_threads: int = 0


@dataclass
class ServeWireConfig:
    # Inference requests (ROUTER; arms connect with --policy.server=ADDRESS).
    address: str = "tcp://127.0.0.1:5570"
    # Deploy / rollback requests (REQ/REP, the same messages as the daemon's --wire.deploy).
    deploy: str = "tcp://127.0.0.1:5571"
    # CurveZMQ keys (`flywheel keys`). Without them both sockets must bind to loopback; with them only
    # clients whose public key is in <keys_dir>/public are heard.
    keys_dir: Path | None = None
    # The server's own key pair in keys_dir (its clients check this key).
    identity: str = SERVER_IDENTITY

    def security(self) -> Security | None:
        return None if self.keys_dir is None else Security(Path(self.keys_dir), self.identity)


@dataclass
class ServeConfig:
    """The policy server: loads a policy, answers arms' observations with action chunks, batching the
    requests that arrive together; hot-swaps and rolls back on deploy requests."""

    policy: ServedPolicyConfig = field(default_factory=ServedPolicyConfig)
    # Serve a version of this model registry (instead of --policy.path).
    registry: Path | None = None
    # With --registry: the version to serve first. Default: the newest.
    version: int | None = None
    wire: ServeWireConfig = field(default_factory=ServeWireConfig)
    # The most requests (one per arm) computed in one batched call; more wait for the next call.
    max_batch: int = 8
    # After the first request of a batch arrives, wait this long for others (0: batch only what
    # arrived while the previous batch was computing).
    batch_wait_ms: float = 0.0
    # Reseed torch before every batch: the same observation then gets the same chunk (tests, replays).
    seed: int | None = None
    # Log the batch and latency statistics this often (0: never).
    stats_every_s: float = 60.0

    def __post_init__(self):
        if (self.policy.path is None) == (self.registry is None):
            raise ValueError("policy: give either --policy.path=DIR or --registry=DIR [--version=N]")
        if self.version is not None and self.registry is None:
            raise ValueError(
                "version: --version needs --registry (or use --policy.path and --policy.version)"
            )
        if self.max_batch < 1:
            raise ValueError(f"max_batch: {self.max_batch} must be >= 1")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms: {self.batch_wait_ms} must be >= 0")
