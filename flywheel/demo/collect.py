"""Data for the demo, recorded by the real rollout daemon in lockstep, in this process.

Three kinds of episodes, as on a real arm: operator-only demonstrations (`data_type=demo`), and
policy runs where the simulated good operator takes over with the simulated pedal when the arm
stalls or drifts (`auto` / `intervention`). New policy versions reach the daemon the way the
trainer sends them: a DEPLOY request on the daemon's ZeroMQ endpoint (inproc://, no TCP port),
validated and swapped in between two ticks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import DeployRequest
from flywheel.contracts.registry import ModelRegistry
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import EpisodeResult, RolloutDaemon
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import SimArmConfig
from teleop.pedals import ConstantPedal, ConstantPedalConfig, SimPedal, SimPedalConfig
from teleop.sim_operator import SimOperator, SimOperatorConfig

BAD_SKILLS = ("slow", "drift", "burst", "noisy")
REPO_ID = "local/flywheel-demo"


@dataclass
class Collected:
    episodes: int
    frames: int
    successes: int
    intervention_frames: int
    takeovers: int = 0  # times the operator took over (pedal pressed) in these episodes
    # Per episode, in order: the share of its frames the operator drove, and its takeovers.
    episode_intervention_rates: list[float] = field(default_factory=list)
    episode_takeovers: list[int] = field(default_factory=list)
    deploy_reply: dict | None = None  # the daemon's answer to the DEPLOY request, when one was sent

    @property
    def intervention_rate(self) -> float:
        return self.intervention_frames / self.frames if self.frames else float("nan")


def _summarize(results: list[EpisodeResult], reply: dict | None = None) -> Collected:
    kept = [r for r in results if r.data_type is not None]
    return Collected(
        episodes=len(kept),
        frames=sum(r.frames for r in kept),
        successes=sum(r.success for r in kept),
        intervention_frames=sum(r.intervention_frames for r in kept),
        takeovers=sum(r.takeovers for r in kept),
        episode_intervention_rates=[r.intervention_frames / r.frames if r.frames else 0.0 for r in kept],
        episode_takeovers=[r.takeovers for r in kept],
        deploy_reply=reply,
    )


def _rollout_config(
    root: Path,
    task: str,
    first_seed: int,
    episodes: int,
    horizon: int,
    policy: PolicySourceConfig,
    skill: str,
) -> RolloutConfig:
    return RolloutConfig(
        robot=SimArmConfig(task=task, seed=first_seed),
        # The operator's name (sim_operator:<skill>) is recorded per episode: the label-quality truth.
        teleop=SimOperatorConfig(skill=skill),
        policy=policy,
        dataset=DatasetConfig(root=root, repo_id=REPO_ID),
        wire=WireConfig.in_process("demo"),
        episodes=episodes,
        fps=0,  # lockstep: as fast as the sim goes, and repeatable
        episode_time_s=horizon / 30,
        report_cadence=False,
    )


def record_demos(
    root: Path, task: str, skill: str, first_seed: int, episodes: int, horizon: int, seed: int
) -> Collected:
    """Operator-only demonstrations: the pedal is held down for the whole episode."""
    policy = PolicySourceConfig(baseline="hold", version=0)  # version 0: the operator drove (data_type demo)
    cfg = _rollout_config(root, task, first_seed, episodes, horizon, policy, skill)
    link = LocalTeleop(
        SimOperator(SimOperatorConfig(skill=skill, seed=seed)),
        ConstantPedal(ConstantPedalConfig(pressed=True)),
    )
    return _summarize(RolloutDaemon(cfg, link=link).run())


def _takeover_link(seed: int) -> LocalTeleop:
    operator = SimOperator(SimOperatorConfig(skill="good", seed=seed))
    return LocalTeleop(operator, SimPedal(SimPedalConfig(seed=seed)))


def random_policy_takeovers(
    root: Path, task: str, first_seed: int, episodes: int, horizon: int, seed: int
) -> Collected:
    """A drifting random policy, corrected by the good operator (the first intervention data)."""
    policy = PolicySourceConfig(baseline="random", seed=seed)
    cfg = _rollout_config(root, task, first_seed, episodes, horizon, policy, "good")
    return _summarize(RolloutDaemon(cfg, link=_takeover_link(seed)).run())


def deployed_rollouts(
    root: Path,
    task: str,
    first_seed: int,
    episodes: int,
    horizon: int,
    seed: int,
    registry: ModelRegistry,
    version: int,
    acting: int | None,
) -> Collected:
    """Rollouts of registry `version`, hot-swapped over ZeroMQ into a daemon acting with `acting`
    (None: holding still), the good operator taking over when the arm stalls or drifts."""
    policy = (
        PolicySourceConfig(path=registry.path(acting))
        if acting is not None
        else PolicySourceConfig(baseline="hold")
    )
    cfg = _rollout_config(root, task, first_seed, episodes, horizon, policy, "good")
    # The first episode waits until the deployed version is validated and waiting, so every recorded
    # frame is acted on by the new version (the swap happens at tick 0).
    daemon = RolloutDaemon(cfg, link=_takeover_link(seed), await_deploy_s=120.0)
    results: list[EpisodeResult] = []
    worker = threading.Thread(target=lambda: results.extend(daemon.run()), name="demo-daemon")
    worker.start()
    deploy = DeployRequest.of_version(registry, version)
    try:
        reply = daemon.deploy(deploy, 120.0)
    finally:
        worker.join()
    if reply.status != "swapped":
        raise RuntimeError(f"deploy v{version:04d} into the daemon: {reply.fields()}")
    return _summarize(results, reply.fields())
