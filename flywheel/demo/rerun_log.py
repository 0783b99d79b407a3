"""demo.rrd: a Rerun recording of the last iteration's labeled episodes (through flywheel.viz)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def write_rerun(results: dict, out: Path, episodes: int = 6) -> str | None:
    """demo.rrd: the last iteration's labeled dataset of seed 0 (its newest episodes) replayed with
    values, advantages and takeover spans, through flywheel.viz."""
    cfg = results["config"]
    labeled = out / "seed0" / f"iter{cfg['iterations']}" / "labeled"
    if not cfg.get("rerun") or not labeled.exists():
        return None
    try:
        import rerun as rr

        from flywheel.viz.replay import read_episodes, read_layout, replay_dataset
    except ImportError as e:  # flywheel.viz is a colleague's package: the demo works without it
        log.warning("no Rerun recording: %s", e)
        return None
    stream = rr.RecordingStream("flywheel-demo")
    path = out / "demo.rrd"
    stream.save(str(path))
    total = len(read_episodes(labeled))
    replay_dataset(stream, read_layout(labeled), episodes=list(range(max(0, total - episodes), total)))
    stream.flush()
    stream.disconnect()  # closes the .rrd (and writes its footer)
    return str(path)
