"""Configuration of `flywheel demo`: how much data, training and evaluation each stage gets.

The defaults are sized for issue 19's budget (at most 20 minutes on 2 CPU cores, 3 seeds, 3 RECAP
iterations, 50 held-out scenes per task and seed; 18 minutes measured); `--quick` shrinks them to
about a minute (one task). docs/demo.md has the budget plan and what each stage costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

# The methods compared side by side (docs/demo.md, "Methods").
METHODS: tuple[str, ...] = ("sft_all", "filtered_sft", "awr", "recap", "recap_cfg", "recap_gt", "good_only")


@dataclass
class DemoConfig:
    """`flywheel demo`: the whole flywheel on the simulated arm, RECAP against baselines."""

    # Everything (datasets, registry, evaluations, results.json, report.md, figures) goes here.
    out_dir: Path = Path("outputs/demo")
    # Replace out_dir if it holds an earlier demo run (a folder the demo did not make is never
    # touched; without this the demo refuses to mix two runs).
    overwrite: bool = False
    # Shrink everything to the ~5 minute smoke run (one task, two seeds, fewer episodes and steps).
    quick: bool = False
    # MetaWorld tasks, all learned by one multi-task policy (the task text is in its prompt).
    tasks: list[str] = field(default_factory=lambda: ["push-v3", "pick-place-v3"])
    # Independent repetitions of the whole flywheel (data, training, evaluation).
    seeds: int = 3
    # RECAP iterations after the initial SFT (each: rollouts with takeovers, label, train, gate,
    # deploy). The baselines are trained once, on the last iteration's data.
    iterations: int = 3
    # Methods to run (recap, and any of sft_all, filtered_sft, awr, recap_cfg, recap_gt, good_only).
    methods: list[str] = field(default_factory=lambda: list(METHODS))

    # Initial data, per task: operator demos (good = expert + small noise; bad = slow, drift,
    # burst, noisy in turn) and random-policy runs the good operator takes over with the pedal.
    good_demos: int = 8
    bad_demos: int = 16
    takeover_episodes: int = 8
    # Rollouts of the deployed policy per task and iteration, the good operator at the pedal: the
    # new data of each iteration, and the episodes its intervention rate is measured on.
    rollouts_per_iteration: int = 20
    # Episode length limit in steps (failures count as this many steps).
    horizon: int = 150

    # Policy: pi_star_recap tiny, with a 10-step chunk (50 costs 60-90 percent more per step).
    chunk_size: int = 10
    # The initial SFT on the first data, shared by every seed and method (the tiny model needs
    # about 1000+ steps to learn a task at all: NOTES.md section 5).
    sft_steps: int = 1000
    # Each method's training from the iteration-0 policy on all data so far: the same steps for
    # every method (docs/demo.md, tries 5-8: 800 steps did worse; 1000 fits the 20 minutes).
    method_steps: int = 1000
    batch_size: int = 32
    # Classifier-free guidance scale of the recap_cfg variant (1 = plain positive conditioning).
    cfg_scale: float = 1.5
    # torch threads per process (1: small models gain nothing from more on a shared 2-core box).
    torch_threads: int = 1
    # Processes running seeds side by side (each with torch_threads threads); 1: one after another.
    workers: int = 2

    # Labeling (flywheel.recap.labeling): value steps per fold, folds, threshold, IQL steps.
    value_steps: int = 400
    cross_fit_folds: int = 3
    threshold_mode: str = "progress"
    positive_fraction: float = 0.10
    iql_steps: int = 1000
    # Share of RECAP's training samples drawn from positive-labeled frames (recap and recap_gt;
    # flywheel/recap/indicator_balance.py says why). None: the trainer's data-type weights
    # (interventions x2, types balanced), which starved the positive mode (docs/demo.md).
    recap_positive_share: float | None = 0.9
    # P(indicator dropped) per RECAP training sample (the paper: 0.3); lower trains the positive
    # mode on more samples, CFG's unconditioned branch on fewer.
    advantage_dropout: float = 0.1

    # Held-out evaluation scenes per task (the same for every method, seed and iteration).
    eval_episodes: int = 50
    # The gate: scenes per task of its own on which the candidate must not succeed less often
    # than the deployed policy, by more than gate_tolerance (a share of those scenes).
    gate_episodes: int = 10
    gate_tolerance: float = 0.05
    # Write a Rerun recording (.rrd) of the last iteration's labeled episodes.
    rerun: bool = True

    def resolved(self) -> DemoConfig:
        """The settings actually used: `quick` overrides the sizes."""
        cfg = self
        if self.quick:
            cfg = replace(
                self,
                tasks=self.tasks[:1],
                seeds=min(self.seeds, 2),
                iterations=1,
                good_demos=4,
                bad_demos=4,
                takeover_episodes=2,
                rollouts_per_iteration=2,
                gate_episodes=2,
                horizon=100,
                sft_steps=120,
                method_steps=30,
                value_steps=100,
                cross_fit_folds=2,
                iql_steps=200,
                eval_episodes=4,
            )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"methods: {unknown} are not among {list(METHODS)}")
        if "recap" not in self.methods:
            raise ValueError(f"methods: {self.methods} must include recap (the flywheel's own policy)")
        if not self.tasks:
            raise ValueError("tasks: at least one task")
        counts = (
            "seeds",
            "good_demos",
            "eval_episodes",
            "gate_episodes",
            "sft_steps",
            "method_steps",
            "horizon",
            "workers",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} must be >= 1")
        if self.iterations < 0:
            raise ValueError(f"iterations: {self.iterations} must be >= 0")
        # Scene seeds are laid out in blocks of 100 per group and 1000 per seed (run.py).
        per_group = (
            self.good_demos,
            self.bad_demos // 4 + 1,
            self.takeover_episodes,
            self.rollouts_per_iteration,
        )
        if max(per_group) > 100 or self.seeds > 9 or len(self.tasks) > 8 or self.iterations > 9:
            raise ValueError("sizes: at most 100 episodes per group, 9 seeds, 8 tasks, 9 iterations")
        if self.recap_positive_share is not None and not 0.0 < self.recap_positive_share < 1.0:
            raise ValueError(f"recap_positive_share: {self.recap_positive_share} must lie in (0, 1)")
        if not 0.0 <= self.advantage_dropout < 1.0:
            raise ValueError(f"advantage_dropout: {self.advantage_dropout} must lie in [0, 1)")
        if not 0.0 <= self.gate_tolerance < 1.0:
            raise ValueError(f"gate_tolerance: {self.gate_tolerance} must lie in [0, 1)")
        if self.cfg_scale < 1.0:
            raise ValueError(f"cfg_scale: {self.cfg_scale} must be >= 1")
