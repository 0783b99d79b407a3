"""Open a Rerun recording stream on the sinks a `RerunConfig` asks for.

Serving goes through the bundled `rerun` CLI in a child process rather than
`RecordingStream.serve_grpc` / `rr.serve_web_viewer`: those two always bind 0.0.0.0 (rerun-sdk
0.26 and still 0.33: they take no bind address), while the CLI takes `--bind`, so the default stays
on loopback. It also lets one stream write a file and feed the server at the same time
(set_sinks(GrpcSink, FileSink)).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import rerun as rr
import rerun.blueprint as rrb

from flywheel.contracts.files import unused_path
from flywheel.viz.config import RerunConfig

log = logging.getLogger(__name__)


def grpc_url(host: str, port: int) -> str:
    return f"rerun+http://{host}:{port}/proxy"


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def rerun_cli() -> str:
    """The bundled `rerun` binary itself. Not `python -m rerun`: that wrapper runs the binary as
    its child, and terminating the wrapper would leave the server running."""
    import rerun_cli as package

    return os.environ.get("RERUN_CLI_PATH") or os.path.join(os.path.dirname(package.__file__), "rerun")


def start_server(cfg: RerunConfig) -> subprocess.Popen:
    """The gRPC server and the web viewer, bound to `cfg.bind`; waits until it listens."""
    cmd = [rerun_cli(), "--serve-web", "--bind", cfg.bind, "--port", str(cfg.grpc_port)]
    cmd += ["--web-viewer-port", str(cfg.web_port), "--server-memory-limit", cfg.server_memory_limit]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = "127.0.0.1" if cfg.bind in ("0.0.0.0", "") else cfg.bind
    if not wait_for_port(host, cfg.grpc_port, 15.0):
        server.kill()
        raise RuntimeError(f"rerun.serve: no server listening on {host}:{cfg.grpc_port} after 15 s")
    return server


@dataclass
class Recording:
    """A stream and what was started for it (closed together)."""

    stream: rr.RecordingStream
    url: str | None = None  # gRPC URL a viewer (or another logger) can connect to
    web_url: str | None = None  # the served web viewer, opened on this recording
    path: Path | None = None  # the .rrd file written: rerun.save, or a free name beside it
    children: list[subprocess.Popen] = field(default_factory=list)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self.stream.flush(timeout_sec=timeout_s)
        except RuntimeError as e:  # a viewer that went away must not break the daemon's shutdown
            log.warning("rerun: flush failed: %s", e)
        self.stream.disconnect()
        for child in self.children:
            child.terminate()
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()


def open_recording(cfg: RerunConfig, blueprint: rrb.Blueprint | None = None) -> Recording:
    """A RecordingStream writing to every sink `cfg` names. Never spawns anything unless asked."""
    stream = rr.RecordingStream(cfg.application_id, recording_id=cfg.recording_id or str(uuid.uuid4()))
    recording = Recording(stream)
    sinks: list = []
    if cfg.serve:
        recording.children.append(start_server(cfg))
        recording.url = grpc_url("127.0.0.1" if cfg.bind == "0.0.0.0" else cfg.bind, cfg.grpc_port)
        recording.web_url = web_viewer_url(cfg, recording.url)
    elif cfg.connect:
        recording.url = cfg.connect
    if cfg.spawn:
        recording.url = recording.url or spawn_viewer(stream, cfg)
        if cfg.serve or cfg.connect:  # a native viewer that watches the server
            recording.children.append(subprocess.Popen([rerun_cli(), recording.url]))
    if recording.url:
        sinks.append(rr.GrpcSink(recording.url))
    if cfg.save:
        recording.path = unused_path(cfg.save)
        if recording.path != cfg.save:  # a restarted child, the trainer's next iteration, a rerun
            log.warning("rerun.save: %s exists and is kept; recording to %s", cfg.save, recording.path)
        recording.path.parent.mkdir(parents=True, exist_ok=True)
        sinks.append(rr.FileSink(str(recording.path)))
    if sinks:
        stream.set_sinks(*sinks)
    if blueprint is not None:
        stream.send_blueprint(blueprint)
    if recording.web_url:
        log.info("rerun: web viewer at %s", recording.web_url)
    return recording


def spawn_viewer(stream: rr.RecordingStream, cfg: RerunConfig) -> str:
    stream.spawn(port=cfg.grpc_port, connect=False)
    return grpc_url("127.0.0.1", cfg.grpc_port)


def web_viewer_url(cfg: RerunConfig, url: str) -> str:
    from urllib.parse import quote

    host = "127.0.0.1" if cfg.bind == "0.0.0.0" else cfg.bind
    return f"http://{host}:{cfg.web_port}/?url={quote(url, safe='')}"
