"""Evaluating a policy checkpoint on the simulated arm: the gate's sim check and the demo's numbers.

It runs the real rollout daemon in lockstep with nobody at the pedal, on held-out scene seeds, and
records the evaluation episodes into a dataset of their own (never into the training data).
trainer/evaluate_batched.py runs the same scenes by the same rules many at a time, one policy call
per chunk for all of them, and records nothing: the demo's evaluation.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import ChunkPolicy, PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import SimArmConfig
from teleop.pedals import ConstantPedal, ConstantPedalConfig
from teleop.sim_operator import SimOperator, SimOperatorConfig

EVAL_SEED_OFFSET = 100_000  # evaluation scenes never overlap the training scenes (seed + episode)


@dataclass
class EvalResult:
    episodes: int
    success_rate: float
    success_ci95: float  # half-width of the normal-approximation 95% interval
    mean_steps_to_success: float  # over successful episodes (nan when none)
    mean_steps: float  # failures counted as the horizon: lower means more throughput
    horizon: int

    def line(self) -> str:
        return (
            f"success {self.success_rate:.2f} ± {self.success_ci95:.2f} over {self.episodes} episodes, "
            f"steps to success {self.mean_steps_to_success:.1f}, "
            f"steps (failures = {self.horizon}) {self.mean_steps:.1f}"
        )


@dataclass(frozen=True)
class SceneOutcome:
    """How one held-out scene went."""

    seed: int  # the scene's seed (scene i of an evaluation: its first seed + i)
    success: bool
    steps: int  # steps run: up to and including the one that succeeded, else the horizon


def evaluate_in_sim(
    policy_path: Path,
    task: str,
    episodes: int,
    out_dir: Path,
    seed: int = EVAL_SEED_OFFSET,
    horizon: int = 200,
    version: int = 1,
) -> EvalResult:
    outcomes = scenes_in_sim(policy_path, task, episodes, out_dir, seed, horizon, version)
    return summarize_scenes(outcomes, horizon)


def scenes_in_sim(
    policy_path: Path | None,
    task: str,
    episodes: int,
    out_dir: Path,
    seed: int = EVAL_SEED_OFFSET,
    horizon: int = 200,
    version: int = 1,
    policy: ChunkPolicy | None = None,
) -> list[SceneOutcome]:
    """Each scene's outcome, through the rollout daemon; `policy` replaces the one at policy_path
    (tests)."""
    check_counts(episodes=episodes, horizon=horizon)
    cfg = RolloutConfig(
        robot=SimArmConfig(task=task, seed=seed),
        policy=PolicySourceConfig(path=None if policy_path is None else Path(policy_path), version=version),
        dataset=DatasetConfig(root=Path(out_dir), repo_id="local/eval"),
        # In-process transport: an evaluation opens no TCP port and can run beside a live daemon.
        wire=WireConfig.in_process("eval"),
        episodes=episodes,
        fps=0,
        episode_time_s=horizon / 30,
        report_cadence=False,
    )
    nobody = LocalTeleop(SimOperator(SimOperatorConfig()), ConstantPedal(ConstantPedalConfig(pressed=False)))
    results = RolloutDaemon(cfg, policy=policy, link=nobody).run()
    return [SceneOutcome(seed + r.index, r.success, r.frames) for r in results]


def check_counts(**counts: int) -> None:
    """Episodes, horizon, batch size: each at least 1 (0 episodes would run the daemon forever)."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}: {value!r} must be a whole number, at least 1")


def summarize_scenes(outcomes: list[SceneOutcome], horizon: int) -> EvalResult:
    success = np.array([o.success for o in outcomes], dtype=float)
    steps = np.array([o.steps if o.success else horizon for o in outcomes], dtype=float)
    n = len(outcomes)
    rate = float(success.mean()) if n else float("nan")
    ci = 1.96 * math.sqrt(rate * (1 - rate) / n) if n else float("nan")
    to_success = float(steps[success == 1].mean()) if success.any() else float("nan")
    return EvalResult(n, rate, ci, to_success, float(steps.mean()) if n else float("nan"), horizon)
