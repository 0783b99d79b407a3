"""`flywheel view`: replay a dataset into Rerun, or host a viewer for the daemon and the trainer.

flywheel view --dataset.root=DS [--rerun.save=FILE.rrd | --rerun.serve=true | --rerun.spawn=true]
flywheel view --rerun.serve=true      # a web viewer + gRPC server; loggers use --rerun.connect=URL
"""

from __future__ import annotations

import logging
import time

from flywheel.viz.blueprint import make_blueprint
from flywheel.viz.config import ViewConfig
from flywheel.viz.logger import log_styles
from flywheel.viz.replay import read_layout, replay_dataset
from flywheel.viz.sinks import Recording, open_recording

log = logging.getLogger(__name__)


def view_main(cfg: ViewConfig) -> int:
    """0 on success, 2 when the dataset cannot be read."""
    if not cfg.rerun.enabled:
        cfg.rerun.spawn = True  # nothing asked: the local viewer is what `view` means
    if cfg.dataset.root is None:
        recording = open_recording(cfg.rerun, make_blueprint([], [], labels=True))
        print(f"rerun: loggers connect with --rerun.connect={recording.url}")
        return _hold(cfg, recording)
    try:
        layout = read_layout(cfg.dataset.root)
    except FileNotFoundError as e:
        log.error("flywheel view: %s", e)
        return 2
    recording = open_recording(cfg.rerun, make_blueprint(layout.action_names, layout.camera_names))
    log_styles(recording.stream, layout.state_names, layout.action_names)
    summary = replay_dataset(recording.stream, layout, cfg.dataset.episodes)
    print(
        f"replayed {summary.episodes} episodes, {summary.frames} frames"
        f"{' with labels' if summary.labeled else ''}, {summary.intervention_spans} intervention spans"
    )
    return _hold(cfg, recording)


def _hold(cfg: ViewConfig, recording: Recording) -> int:
    """A served viewer lives in a child process of ours: keep it up until Ctrl-C (or serve_time_s)."""
    if cfg.rerun.serve:
        print(f"rerun: open {recording.web_url}")
        deadline = time.monotonic() + cfg.serve_time_s if cfg.serve_time_s > 0 else float("inf")
        try:
            while time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    recording.close()
    return 0
