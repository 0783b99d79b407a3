"""Record a RECAP dataset on the simulated arm: operator demos, autonomous rollouts, and rollouts
where the operator takes over (the three data types of the seed document).

    python examples/prepare_recap_dataset.py --output_dir=./my_recap_dataset \
        --num_demo=100 --num_auto=50 --num_intervention=50

Demos are the good simulated operator driving every frame. Autonomous rollouts and intervention
rollouts are the policy acting (`--policy_path`, a LeRobot pretrained_model folder; default: a
drifting baseline), the latter with a simulated operator who presses the pedal when it drifts.
Everything goes through the real rollout daemon, in lockstep, into one LeRobotDataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import draccus

from flywheel.contracts.dataset import DatasetConfig, episode_table
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import PolicySourceConfig
from robots.sim import SimArmConfig
from teleop.pedals import ConstantPedalConfig, SimPedalConfig
from teleop.sim_operator import SimOperatorConfig


@dataclass
class PrepareConfig:
    output_dir: Path = Path("outputs/datasets/recap")
    num_demo: int = 20
    num_auto: int = 20
    num_intervention: int = 20
    task: str = "push-v3"
    # The policy of the autonomous and intervention rollouts (default: the drifting baseline).
    policy_path: Path | None = None
    # Episode length in control steps.
    horizon: int = 200
    seed: int = 0


def record(cfg: PrepareConfig, episodes: int, pedal, version: int | None, seed: int) -> None:
    if episodes == 0:
        return
    rollout = RolloutConfig(
        robot=SimArmConfig(task=cfg.task, seed=seed),
        teleop=SimOperatorConfig(skill="good", seed=seed),
        pedal=pedal,
        local_teleop=True,
        policy=PolicySourceConfig(path=cfg.policy_path, baseline="random", version=version, seed=seed),
        dataset=DatasetConfig(root=cfg.output_dir, repo_id="local/recap"),
        wire=WireConfig.in_process("prepare"),
        episodes=episodes,
        fps=0,
        episode_time_s=cfg.horizon / 30,
        report_cadence=False,
    )
    RolloutDaemon(rollout).run()


def main(cfg: PrepareConfig) -> None:
    # Different scene seeds per kind, so the three kinds do not replay the same scenes.
    record(cfg, cfg.num_demo, ConstantPedalConfig(pressed=True), 0, cfg.seed)
    record(cfg, cfg.num_auto, ConstantPedalConfig(pressed=False), None, cfg.seed + 10_000)
    record(
        cfg,
        cfg.num_intervention,
        SimPedalConfig(press_probability=0.5, seed=cfg.seed),
        None,
        cfg.seed + 20_000,
    )
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    table = episode_table(LeRobotDataset("local/recap", root=cfg.output_dir))
    print(table.groupby("data_type").agg(episodes=("episode_index", "count"), success=("success", "mean")))
    print(f"dataset: {cfg.output_dir}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(draccus.parse(PrepareConfig))
