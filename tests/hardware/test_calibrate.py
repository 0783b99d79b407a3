"""`flywheel calibrate` runs LeRobot's own interactive calibration, here on an emulated SO-100."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from robots.emulators.base import relaxed_sdk_timeouts_env
from robots.emulators.feetech import emulated_so100


def test_calibrate_writes_lerobots_calibration_file(tmp_path):
    calibration = tmp_path / "calibration"
    with emulated_so100(tmp_path / "emulator", arm_id="factory") as (port, arm):
        proc = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "calibrate", "--robot", "so100", f"--robot.port={port}",
             f"--robot.calibration_dir={calibration}", "--robot.id=follower", "--which=robot"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=relaxed_sdk_timeouts_env(tmp_path / "site"),
        )  # fmt: skip
        output = _Output(proc)
        try:
            output.wait_for("middle of its range of motion and press ENTER")  # it is mid-range
            proc.stdin.write("\n")
            proc.stdin.flush()
            output.wait_for("Recording positions")  # a hand now moves every joint through its range
            time.sleep(0.5)
            middle = {i: arm.position(i) for i in range(1, 7)}
            for offset in (-600, 600, 0):
                for i in range(1, 7):
                    arm.set_position(i, middle[i] + offset)
                time.sleep(0.5)
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, output.text[-3000:]
    saved = json.loads((calibration / "follower.json").read_text())
    assert set(saved) >= {"shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "gripper"}
    assert all(m["range_min"] < m["range_max"] for name, m in saved.items() if name != "wrist_roll")


class _Output:
    """The child's output, read on a thread, so prompts without a newline can be waited for."""

    def __init__(self, proc: subprocess.Popen):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        while chunk := proc.stdout.read(1):
            self.text += chunk

    def wait_for(self, needle: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert time.monotonic() < deadline, f"never saw {needle!r}:\n{self.text[-2000:]}"
            time.sleep(0.05)
