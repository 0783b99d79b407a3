"""Make docs/rerun-viewer.png: a live sim run served to the web viewer, shot in headless Chromium.

    MUJOCO_GL=egl .venv/bin/python -m tests.viz.make_screenshot --value_path=DS_LABELED/meta/recap_value

Also writes the same recording to docs/rerun-viewer.rrd's path given by --rrd (not committed).
Needs `apt-get install chromium`. Not a test: it takes about a minute.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

from flywheel.viz import RerunConfig, RerunLogger
from flywheel.viz.screenshot import screenshot
from tests.viz.simrun import drive, sim_arm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--value_path", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/rerun-viewer.png"))
    parser.add_argument("--rrd", type=Path, default=Path("/tmp/rerun-viewer.rrd"))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--wait_s", type=float, default=25.0)
    args = parser.parse_args()
    cfg = RerunConfig(
        save=args.rrd,
        serve=True,
        grpc_port=free_port(),
        web_port=free_port(),
        value_path=args.value_path,
        value_every=2,
        value_n_step=50,
        value_episode_steps=200,  # the labeled sim dataset's T_max (200-step episodes)
        jpeg_quality=0,  # the sim's 96x96 camera: raw pixels, JPEG would blur them
    )
    arm = sim_arm(seed=3, camera=True)
    logger = RerunLogger.from_config(cfg, arm.observation_features, list(arm.action_features))
    next_tick = [time.perf_counter()]

    def pace() -> None:  # 30 Hz, so the wall_time timeline looks like a real run
        next_tick[0] += 1 / 30
        time.sleep(max(0.0, next_tick[0] - time.perf_counter()))

    try:
        drive(logger, arm, args.frames, takeover=range(70, 140), on_tick=pace)
        logger.policy_swapped(4, args.frames)
        time.sleep(2.0)  # let the value monitor catch up before the picture
        print(
            "dropped",
            logger.dropped,
            "value evaluations",
            logger.value_monitor and logger.value_monitor.evaluations,
        )
        print("shooting", logger.recording.web_url)
        screenshot(logger.recording.web_url, args.out, wait_s=args.wait_s)
    finally:
        logger.close()
        arm.disconnect()
    print("wrote", args.out)


if __name__ == "__main__":
    main()
