"""Handover at the pedal, measured on emulated SO-100 buses.

The real rollout daemon at 30 Hz drives LeRobot's SO100Follower on a Feetech bus emulator; the
teleop process loop (`run_teleop`, in a thread, over inproc:// sockets) reads LeRobot's SO100Leader
on a second emulator, with a scheduled pedal: several takeovers an episode. The policy follows a
fixed trajectory in time (slow sines around the middle of every joint), whatever the arm's state,
so it drives the arm away from the leader, and when it resumes it wants to be where its trajectory
is by then, not where the operator left the arm: the worst case for a bumpless resume. The operator
holds the leader still: without mirror mode about 20 degrees off the follower's start on every
joint; with it, wherever the mirror had brought it (the follower's pose) when the pedal went down.

Each run is one of: no step limit, `safety.max_step` 2 or 5, each with mirror mode off and on.
Units are LeRobot's SO-100 units with use_degrees=True (the preset's): degrees, the gripper 0-100.

Figures per run (`<run>_<figure>`, worst over the run's takeovers or resumes):
- takeover_gap: how far the leader is from the follower when the pedal goes down (max over joints);
- takeover_jump / resume_jump: the largest per-tick change of the commanded action, max over joints
  of |a_t - a_{t-1}|, from the handover tick to the next handover, WINDOW ticks at most;
- takeover_lead / resume_lead: on the handover tick, how far the command is from where the arm is,
  max |a_t - observed_t|: what the servo is asked to cover at once (the step limit bounds it);
- takeover_reach_ticks: ticks from the pedal until the follower is within REACHED of the leader
  (-1: not within the takeover);
- resume_settle_ticks: ticks from the hand-back until the command is the policy's own (the step
  limit no longer clips it);
- autonomous_jump: the largest per-tick change while the policy drives, away from any handover:
  the policy's own smoothness, for reference;
- held_ticks: ticks that held position (a late teleop answer, or no policy action ready).

The emulated servos move at most 1500 steps/s (132 degrees/s): with no step limit the follower
still needs about 10 ticks to cover a 45-degree jump, which a real arm would try to do at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lerobot.robots.so_follower import SO100FollowerConfig
from lerobot.teleoperators.so_leader import SO100LeaderConfig

from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import Prefix
from flywheel.rollout.safety import SafetyConfig
from flywheel.rollout.teleop_link import TeleopSnapshot
from robots.emulators.base import relaxed_sdk_timeouts
from robots.emulators.feetech import SO100_MOTORS, emulated_so100
from teleop.pedals import ScheduledPedalConfig
from teleop.process import TeleopProcessConfig, run_teleop

FPS = 30
NAMES = [f"{motor}.pos" for motor in SO100_MOTORS]
UNITS = "degrees (SO-100, use_degrees=True); gripper 0-100"
# (run, safety.max_step, mirror)
RUNS: list[tuple[str, float | None, bool]] = [
    ("nolimit", None, False),
    ("step2", 2.0, False),
    ("step5", 5.0, False),
    ("nolimit_mirror", None, True),
    ("step2_mirror", 2.0, True),
    ("step5_mirror", 5.0, True),
]
LEADER_OFFSET_RAW = 230  # the operator's leader, about 20 degrees off the follower on every joint
REACHED = 1.0  # the follower has reached the leader within this, on every joint
WINDOW = 45  # ticks after a handover that count as the handover (1.5 s)


class SweepPolicy:
    """Sines in time around the middle of each joint (0 degrees; the gripper at 50), a period of
    4-6 s and 25 degrees (gripper 20) of amplitude: about 1.3 units a tick at most. Time starts at
    the first chunk, where every sine is at the middle, which is where the emulated arm starts."""

    version = 1
    amplitude = np.array([25.0, 25.0, 25.0, 25.0, 25.0, 20.0])
    period_s = np.array([4.0, 5.0, 4.5, 6.0, 5.5, 4.0])
    middle = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 50.0])

    def __init__(self, chunk: int = 10):
        self.chunk = chunk
        self._t0: float | None = None

    def predict_chunk(
        self, observation: dict[str, Any], task: str, prefix: Prefix | None = None
    ) -> np.ndarray:
        now = time.monotonic()
        self._t0 = now if self._t0 is None else self._t0
        t = now - self._t0 + np.arange(self.chunk)[:, None] / FPS
        return (self.middle + self.amplitude * np.sin(2 * np.pi * t / self.period_s)).astype(np.float32)

    def reset(self) -> None:
        pass  # the trajectory goes on in time through a takeover: that is what makes resuming hard


@dataclass
class TickRecord:
    intervening: bool
    source: str  # policy | operator | hold
    observed: np.ndarray  # the follower's joints at the tick
    operator: np.ndarray  # the leader's action (NaN when none)
    requested: np.ndarray  # before the safety layer
    commanded: np.ndarray | None = None  # what went to the follower


def _pedal_schedule(takeovers: int, lead_in: int, down: int, up: int) -> list[list[int]]:
    """[start, end) frames of each takeover: `lead_in` frames of policy first, then down / up."""
    return [[lead_in + n * (down + up), lead_in + n * (down + up) + down] for n in range(takeovers)]


def _instrument(daemon: RolloutDaemon, log: list[TickRecord]) -> None:
    """Record each tick's choice (wrapping `_choose_action`) and what was sent (`send_action`)."""
    choose, send = daemon._choose_action, daemon.robot.send_action

    def chosen(observation, task, frame, snapshot: TeleopSnapshot, intervening, hold):
        action, version, source = choose(observation, task, frame, snapshot, intervening, hold)
        operator = snapshot.action or {}
        log.append(
            TickRecord(
                intervening,
                source,
                np.array([float(observation[n]) for n in NAMES]),
                np.array([float(operator.get(n, np.nan)) for n in NAMES]),
                np.asarray(action, dtype=np.float64),
            )
        )
        return action, version, source

    def sent(action):
        out = send(action)
        log[-1].commanded = np.array([float(out[n]) for n in NAMES])
        return out

    daemon._choose_action, daemon.robot.send_action = chosen, sent


def _run(folder: Path, max_step: float | None, mirror: bool, frames: int, down: list[list[int]]):
    """One episode: the daemon on the emulated follower, the teleop loop on the emulated leader."""
    calibration = folder / "calibration"
    log: list[TickRecord] = []
    with (
        relaxed_sdk_timeouts(500.0),
        emulated_so100(calibration, arm_id="follower") as (follower_port, _),
        emulated_so100(calibration, arm_id="leader") as (leader_port, leader),
    ):
        for servo_id in range(1, 7):  # where the operator left the leader (the mirror brings it back)
            leader.set_position(servo_id, leader.position(servo_id) + LEADER_OFFSET_RAW)
        wire = WireConfig.in_process("bench-handover")
        cfg = RolloutConfig(
            robot=SO100FollowerConfig(port=follower_port, id="follower", calibration_dir=calibration),
            dataset=DatasetConfig(root=folder / "dataset", repo_id="bench/handover", record=False),
            wire=wire,
            episodes=1,
            fps=FPS,
            episode_time_s=frames / FPS,
            safety=SafetyConfig(max_step=max_step),
            report_cadence=False,
            teleop_wait_s=30.0,
        )
        daemon = RolloutDaemon(cfg, policy=SweepPolicy())
        if daemon.action_names != NAMES:
            raise RuntimeError(f"SO-100 action names changed: {daemon.action_names}")
        _instrument(daemon, log)
        teleop_cfg = TeleopProcessConfig(
            teleop=SO100LeaderConfig(port=leader_port, id="leader", calibration_dir=calibration),
            pedal=ScheduledPedalConfig(down=down),
            wire=wire,
            mirror=mirror,
        )
        stop = threading.Event()
        teleop = threading.Thread(
            target=run_teleop, args=(teleop_cfg, stop), name="bench-teleop", daemon=True
        )
        teleop.start()
        try:
            daemon.run()
        finally:
            stop.set()
            teleop.join(timeout=10.0)
    return [r for r in log if r.commanded is not None]


def _transitions(log: list[TickRecord], into: bool) -> list[int]:
    """Ticks on which the daemon changed to intervening (`into`) or back to the policy."""
    return [k for k in range(1, len(log)) if log[k].intervening == into and log[k - 1].intervening != into]


def _window(log: list[TickRecord], start: int) -> range:
    """From a handover tick to the next handover, WINDOW ticks at most."""
    end = start + 1
    while end < min(len(log), start + WINDOW) and log[end].intervening == log[start].intervening:
        end += 1
    return range(start, end)


def _first(ticks: range, condition) -> int:
    """Ticks from the window's start until `condition(k)` holds; -1 if it never does."""
    return next((k - ticks.start for k in ticks if condition(k)), -1)


def _takeover(log: list[TickRecord], k: int, jumps: np.ndarray, lead: np.ndarray) -> dict[str, float]:
    ticks = _window(log, k)
    return {
        "takeover_gap": float(np.abs(log[k].operator - log[k].observed).max()),
        "takeover_jump": float(jumps[ticks.start : ticks.stop].max()),
        "takeover_lead": float(lead[k]),
        "takeover_reach_ticks": _first(
            ticks, lambda t: np.abs(log[t].observed - log[t].operator).max() <= REACHED
        ),
    }


def _resume(log: list[TickRecord], k: int, jumps: np.ndarray, lead: np.ndarray) -> dict[str, float]:
    ticks = _window(log, k)
    return {
        "resume_jump": float(jumps[ticks.start : ticks.stop].max()),
        "resume_lead": float(lead[k]),
        "resume_settle_ticks": _first(
            ticks, lambda t: np.abs(log[t].commanded - log[t].requested).max() <= 1e-3
        ),
    }


def _worst(rows: list[dict[str, float]]) -> dict[str, float]:
    """The worst of each figure over the handovers: the largest, and for tick counts -1 (never) first."""
    out: dict[str, float] = {}
    for name in rows[0] if rows else ():
        values = [row[name] for row in rows]
        never = name.endswith("_ticks") and -1 in values
        out[f"{name}_max"] = -1 if never else max(values)
    return out


def _figures(log: list[TickRecord]) -> dict[str, Any]:
    commanded = np.stack([r.commanded for r in log])
    jumps = np.r_[0.0, np.abs(np.diff(commanded, axis=0)).max(axis=1)]
    lead = np.array([np.abs(r.commanded - r.observed).max() for r in log])
    takeovers, resumes = _transitions(log, True), _transitions(log, False)
    near = {t for k in takeovers + resumes for t in _window(log, k)}
    autonomous = [k for k in range(1, len(log)) if log[k].source == "policy" and k not in near]
    return {
        "takeovers": len(takeovers),
        "resumes": len(resumes),
        **_worst([_takeover(log, k, jumps, lead) for k in takeovers]),
        **_worst([_resume(log, k, jumps, lead) for k in resumes]),
        "autonomous_jump_max": float(jumps[autonomous].max()) if autonomous else None,
        # Ticks that held position (the teleop answer was late, or no policy action was ready).
        "held_ticks": sum(r.source == "hold" for r in log),
    }


def handover(work: Path, quick: bool) -> dict[str, Any]:
    """The worst per-tick jump at takeover and at resume, with and without the step limit and mirror
    mode (see the module's docstring)."""
    takeovers, down, up = (2, 30, 40) if quick else (4, 45, 60)
    lead_in = 40
    frames = lead_in + takeovers * (down + up)
    schedule = _pedal_schedule(takeovers, lead_in, down, up)
    out: dict[str, Any] = {"units": UNITS, "fps": FPS, "takeovers_per_run": takeovers}
    for label, max_step, mirror in RUNS:
        log = _run(work / label, max_step, mirror, frames, schedule)
        out |= {f"{label}_{name}": value for name, value in _figures(log).items()}
    return out


if __name__ == "__main__":  # python -m benchmarks.handover [--quick]
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-handover-") as work:
        start = time.perf_counter()
        figures = handover(Path(work), quick="--quick" in sys.argv)
        figures["case_wall_s"] = time.perf_counter() - start
    print(json.dumps(figures, indent=1))
