"""The gate: a candidate version goes out only if it is not worse than the acting one.

Two checks, each on data neither model trained on:
  - held-out episodes: the policy loss (flow matching for pi_star_recap) on held-out frames, with the
    same noise for both models;
  - when the robot is the sim: success rate and steps on evaluation scenes (trainer.evaluate).
The decision and its numbers are returned for the log and the registry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins

from trainer.evaluate import EvalResult, evaluate_in_sim

log = logging.getLogger(__name__)


@dataclass
class GateConfig:
    # Every n-th saved episode is held out of training and used here.
    holdout_every: int = 5
    # The candidate may be this much worse in held-out loss (relative) and still pass.
    loss_tolerance: float = 0.05
    # Sim check: evaluation episodes (0: skip), and how many fewer successes are tolerated.
    sim_episodes: int = 10
    success_tolerance: float = 0.0
    batch_size: int = 64


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate_loss: float | None = None
    current_loss: float | None = None
    candidate_sim: dict | None = None
    current_sim: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def holdout_episodes(episodes: list[int], every: int) -> list[int]:
    return [e for e in episodes if every > 0 and e % every == every - 1]


@torch.no_grad()
def heldout_loss(
    pretrained: Path, dataset_root: Path, episodes: list[int], batch_size: int, seed: int = 0
) -> float:
    register_third_party_plugins()
    cfg = PreTrainedConfig.from_pretrained(pretrained)
    cfg.device = "cpu" if not torch.cuda.is_available() else cfg.device
    policy = get_policy_class(cfg.type).from_pretrained(pretrained, config=cfg)
    pre, _ = make_pre_post_processors(
        cfg,
        pretrained_path=str(pretrained),
        preprocessor_overrides={"device_processor": {"device": cfg.device}},
    )
    delta = resolve_delta_timestamps(cfg, LeRobotDatasetMetadata("local/heldout", root=dataset_root))
    dataset = LeRobotDataset("local/heldout", root=dataset_root, episodes=episodes, delta_timestamps=delta)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the same flow-matching noise for every model compared
    total, count = 0.0, 0
    try:
        policy.eval()
        for batch in loader:
            loss, _ = policy(pre(batch))
            n = len(batch["index"])
            total, count = total + float(loss) * n, count + n
    finally:
        torch.random.set_rng_state(generator_state)
    return total / max(count, 1)


def decide(
    cfg: GateConfig,
    candidate: Path,
    current: Path | None,
    dataset_root: Path,
    heldout: list[int],
    sim_task: str | None,
    work_dir: Path,
) -> GateDecision:
    if current is None:
        return GateDecision(True, ["no acting version: the first one goes out"])
    decision = GateDecision(True)
    if heldout:
        decision.candidate_loss = heldout_loss(candidate, dataset_root, heldout, cfg.batch_size)
        decision.current_loss = heldout_loss(current, dataset_root, heldout, cfg.batch_size)
        limit = decision.current_loss * (1 + cfg.loss_tolerance)
        ok = decision.candidate_loss <= limit
        decision.passed &= ok
        decision.reasons.append(
            f"held-out loss {decision.candidate_loss:.4f} vs {decision.current_loss:.4f} "
            f"({'within' if ok else 'above'} the limit {limit:.4f}) on {len(heldout)} episodes"
        )
    if sim_task and cfg.sim_episodes > 0:
        cand = evaluate_in_sim(candidate, sim_task, cfg.sim_episodes, work_dir / "candidate")
        curr = evaluate_in_sim(current, sim_task, cfg.sim_episodes, work_dir / "current")
        decision.candidate_sim, decision.current_sim = _eval_dict(cand), _eval_dict(curr)
        ok = cand.success_rate >= curr.success_rate - cfg.success_tolerance
        decision.passed &= ok
        decision.reasons.append(
            f"sim {cand.success_rate:.2f} vs {curr.success_rate:.2f} success "
            f"({'not worse' if ok else 'worse'}) on {cfg.sim_episodes} scenes"
        )
    log.info("gate %s: %s", "passed" if decision.passed else "refused", "; ".join(decision.reasons))
    return decision


def _eval_dict(result: EvalResult) -> dict:
    # JSON has no NaN (e.g. steps to success when nothing succeeded): None instead.
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(result).items()}
