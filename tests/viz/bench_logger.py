"""Cost of RerunLogger.tick on the control thread, and whether the queue drops, on the real sim.

    MUJOCO_GL=egl .venv/bin/python -m tests.viz.bench_logger [--value_path=.../meta/recap_value]

Three runs of the same sim loop (state-only sim + a synthetic 640x480 camera image per tick, the
size of a real arm's camera): paced at 30 Hz, then free-running. Not a test: it takes ~30 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from flywheel.contracts.ticks import Tick
from flywheel.viz import RerunConfig, RerunLogger
from tests.viz.simrun import drive, sim_arm


class Timed:
    """Wraps a logger and times each tick call."""

    def __init__(self, logger: RerunLogger):
        self.logger, self.costs = logger, []
        self.image = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), np.uint8) for i in range(4)]

    def start_episode(self, *args) -> None:
        self.logger.start_episode(*args)

    def end_episode(self, *args) -> None:
        self.logger.end_episode(*args)

    def tick(self, tick: Tick) -> None:
        tick = dataclasses.replace(
            tick, observation={**tick.observation, "wrist": self.image[tick.frame % 4]}
        )
        t0 = time.perf_counter()
        self.logger.tick(tick)
        self.costs.append(time.perf_counter() - t0)


def run(fps: float, frames: int, value_path: Path | None, rrd: Path) -> dict:
    arm = sim_arm()
    features = {**arm.observation_features, "wrist": (480, 640, 3)}
    cfg = RerunConfig(save=rrd, value_path=value_path, value_every=5)
    logger = RerunLogger.from_config(cfg, features, list(arm.action_features))
    timed = Timed(logger)
    deadline = [time.perf_counter()]

    def pace() -> None:
        if fps > 0:
            deadline[0] += 1 / fps
            time.sleep(max(0.0, deadline[0] - time.perf_counter()))

    start = time.perf_counter()
    drive(timed, arm, frames, takeover=range(frames // 3, frames // 2), on_tick=pace)
    loop_s = time.perf_counter() - start
    backlog = len(logger._queue)
    logger.close()
    arm.disconnect()
    us = np.array(timed.costs) * 1e6
    return {
        "fps": fps or "free",
        "ticks": frames,
        "loop_hz": round(frames / loop_s, 1),
        "tick_us_p50": round(float(np.percentile(us, 50)), 1),
        "tick_us_p99": round(float(np.percentile(us, 99)), 1),
        "tick_us_max": round(float(us.max()), 1),
        "dropped": logger.dropped,
        "backlog_at_end": backlog,
        "value_evaluations": logger.value_monitor.evaluations if logger.value_monitor else 0,
        "rrd_mb": round(rrd.stat().st_size / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--value_path", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fps in (30, 0):
            frames = int(args.seconds * 30)
            print(json.dumps(run(fps, frames, args.value_path, Path(tmp) / f"bench{fps}.rrd")))


if __name__ == "__main__":
    main()
