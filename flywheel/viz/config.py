"""Settings of the Rerun visualisation: where the recording goes and how V(s) is watched live."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RerunConfig:
    """Where a Rerun recording goes: a file, a served viewer (browser or remote), a local viewer."""

    # Write the recording to this .rrd file (headless runs; open later with `rerun FILE.rrd`).
    save: Path | None = None
    # Host a gRPC server and a web viewer (open http://<bind>:<web_port> in a browser).
    serve: bool = False
    # Start a native viewer on this machine (needs a display).
    spawn: bool = False
    # Send to an already running viewer or server instead (e.g. the URL `flywheel view` prints:
    # rerun+http://127.0.0.1:9876/proxy).
    connect: str | None = None
    # Interface the served viewer binds. Loopback by default: the stream is not authenticated.
    bind: str = "127.0.0.1"
    # Port of the served web viewer (HTTP).
    web_port: int = 9090
    # Port of the gRPC server that loggers and viewers connect to.
    grpc_port: int = 9876
    # Memory the served gRPC server keeps for viewers that connect late (oldest data dropped first).
    server_memory_limit: str = "25%"
    # Rerun application id; loggers with the same application and recording id share one recording.
    application_id: str = "flywheel"
    # Recording id (default: a new one per run). Give the trainer the daemon's to log into its recording.
    recording_id: str | None = None
    # A trained value model (<labeled root>/meta/recap_value) to show V(s) and the advantage live.
    value_path: Path | None = None
    # Evaluate V(s) on the newest observation every this many control ticks (at most: never queued).
    value_every: int = 5
    # N of the live N-step advantage A_t = sum_{k<N} r_{t+k} + V(o_{t+N}) - V(o_t) (normalized units).
    value_n_step: int = 50
    # T_max that normalizes the live rewards; use the labeling's (its longest episode by default).
    value_episode_steps: int = 600
    # -C_fail of a failed episode's last step, as a fraction of T_max (the labeling's default).
    value_failure_penalty: float = 0.5
    # Ticks the control thread may queue for the logging thread; beyond that ticks are dropped.
    queue_size: int = 512
    # Log camera images every this many ticks (images are the heavy part of a recording).
    image_every: int = 1
    # JPEG-compress camera images on the logging thread (1-100); 0 logs raw RGB (a 640x480 camera
    # at 30 Hz is then ~28 MB/s into the .rrd and the server's memory).
    jpeg_quality: int = 80

    def __post_init__(self) -> None:
        for name in ("value_every", "value_n_step", "value_episode_steps", "queue_size", "image_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"rerun.{name}: {getattr(self, name)} must be >= 1")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"rerun.jpeg_quality: {self.jpeg_quality} is outside 0..100")
        if self.serve and self.connect:
            raise ValueError("rerun.connect: give either --rerun.serve or --rerun.connect, not both")

    @property
    def enabled(self) -> bool:
        """True when the recording goes somewhere."""
        return bool(self.save or self.serve or self.spawn or self.connect)


@dataclass
class ViewDatasetConfig:
    # A recorded or labeled flywheel dataset to replay. None: only start the viewer and wait.
    root: Path | None = None
    # Episode indices to replay (default: all).
    episodes: list[int] | None = None


@dataclass
class ViewConfig:
    """`flywheel view`: replay a dataset into Rerun, or host a viewer that loggers connect to."""

    dataset: ViewDatasetConfig = field(default_factory=ViewDatasetConfig)
    rerun: RerunConfig = field(default_factory=RerunConfig)
    # With --rerun.serve: keep serving until Ctrl-C (or this many seconds; 0 = until Ctrl-C).
    serve_time_s: float = 0.0

    @property
    def dataset_root(self) -> Path | None:
        return self.dataset.root
