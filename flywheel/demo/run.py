"""`flywheel demo`: the whole flywheel improving a policy on the simulated arm, with evidence.

    initial data   operator demos of mixed quality + random-policy runs the good operator takes
                   over, recorded by the rollout daemon (lockstep, in-process)
    iteration 0    SFT of pi_star_recap (tiny) on the initial data: the shared starting policy
    per seed, iteration k = 1..K:
        rollouts   the deployed policy, hot-swapped into the daemon over ZeroMQ; the simulated good
                   operator takes over with the pedal when the arm stalls or drifts
        label      value function, advantages, indicator (flywheel.recap); IQL for AWR
        train      every method from the iteration-0 policy, same data, same steps
        evaluate   held-out scenes: success, steps to success, steps with failures = horizon
    the last deployed policy runs one more batch of rollouts: its intervention rate
    report         results.json, report.md, figures/*.png, demo.rrd (docs/demo.md)

Entry point: `demo_main(DemoConfig) -> int` (0 done, 2 bad configuration or output folder).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flywheel.demo import baselines as bl
from flywheel.demo import collect
from flywheel.demo.config import DemoConfig
from flywheel.demo.report import (
    ALL_TASKS,
    check_results,
    results_table,
    rows_of,
    summarize,
    write_report,
)
from flywheel.recap.labeling import LabelConfig, Labels, run_labeling
from flywheel.recap.source import Source, load_source
from trainer.evaluate import EVAL_SEED_OFFSET, summarize_scenes
from trainer.evaluate_batched import DEFAULT_BATCH_SIZE, scenes_batched
from trainer.registry import ModelRegistry

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Scene seeds: initial data, rollouts and evaluation never share a scene.
INITIAL_SCENES = 0
ROLLOUT_SCENES = 10_000


@dataclass
class Run:
    """Results of the whole demo, written to results.json (schema: docs/demo.md)."""

    config: dict
    started_at: float = field(default_factory=time.time)
    evaluations: list[dict] = field(default_factory=list)
    rollouts: list[dict] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    hotswaps: list[dict] = field(default_factory=list)
    data: list[dict] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    rerun: str | None = None

    def time(self, stage: str, seconds: float) -> None:
        self.timings_s[stage] = round(self.timings_s.get(stage, 0.0) + seconds, 2)

    def absorb(self, part: Run) -> None:
        """Add one seed's results, run in another process (stage times add up over processes)."""
        for name in ("evaluations", "rollouts", "labels", "hotswaps", "data"):
            rows = getattr(self, name)
            rows.extend(getattr(part, name))
            rows.sort(key=_seed_order)  # completion order varies; results.json does not
        for stage_name, seconds in part.timings_s.items():
            self.time(stage_name, seconds)


def _seed_order(row: dict) -> tuple[int, int]:
    """Shared rows (seed None: the initial data, the iteration-0 SFT) first, then by seed; stable."""
    return (0, 0) if row.get("seed") is None else (1, int(row["seed"]))


def demo_main(cfg: DemoConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("flywheel.demo").setLevel(logging.INFO)  # even when an import configured logging
    # The daemon logs every episode and takeover: hundreds of lines here.
    for noisy in ("flywheel.rollout", "trainer.train_policy", "flywheel.recap", "robots.sim"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        resolved = cfg.resolved()
        out = prepare_out_dir(resolved)
    except (ValueError, FileExistsError) as e:
        log.error("flywheel demo: %s", e)
        return 2
    results = run_demo(resolved, out)
    last = max(r["iteration"] for r in results["summary"])
    print("\n" + "\n".join(results_table(rows_of(results, ALL_TASKS, last))))
    print(f"\nflywheel demo: {results['wall_time_s']:.0f} s; report {out / 'report.md'}")
    problems = check_results(results, out)
    for problem in problems:
        log.error("results are inconsistent: %s", problem)
    return 1 if problems else 0


# Written first into every demo output folder: how --overwrite knows a folder is an earlier run's.
MARKER = ".flywheel-demo"


def prepare_out_dir(cfg: DemoConfig) -> Path:
    """An empty out_dir. --overwrite replaces only an earlier demo's folder (it holds MARKER), never
    a folder the demo did not make, whatever it holds."""
    out = Path(cfg.out_dir)
    if out.is_symlink():
        raise ValueError(f"out_dir: {out} is a symbolic link (to {out.resolve()}); pass a real folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"out_dir: {out} is not empty and is not an earlier demo's output")
        if not cfg.overwrite:
            raise FileExistsError(f"out_dir: {out} holds an earlier demo run (--overwrite=true replaces it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `flywheel demo`; --overwrite=true may replace this folder\n")
    return out


def run_demo(cfg: DemoConfig, out: Path) -> dict:
    start = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    run = Run(config=_plain(asdict(cfg)))
    initial = out / "data" / "initial"
    with stage(run, "record initial data"):
        record_initial_data(cfg, initial)
    run.data.append({"seed": None, "iteration": 0, **dataset_counts(load_source(initial))})
    with stage(run, "train sft (iteration 0)"):
        sft0 = train_sft0(cfg, initial, out / "sft0")
    evaluate(cfg, run, out / "eval" / "sft0", sft0, "sft", None, 0)
    for part in tqdm(seed_runs(cfg, out, initial, sft0), total=cfg.seeds, desc="demo seeds", unit="seed"):
        run.absorb(part)
        save_results(run, out, time.perf_counter() - start)  # partial results survive a crash
    results = save_results(run, out, time.perf_counter() - start)
    with stage(run, "report"):
        run.figures, run.rerun = write_report(results, out)
    results = save_results(run, out, time.perf_counter() - start)
    write_report(results, out, figures_too=False)  # the markdown again, with the final timings
    return results


@contextmanager
def stage(run: Run, name: str) -> Iterator[None]:
    """Adds the time spent in the block to the stage's total (results.json `timings_s`)."""
    began = time.perf_counter()
    yield
    run.time(name, time.perf_counter() - began)


# --- initial data and the shared SFT -----------------------------------------------------------
def record_initial_data(cfg: DemoConfig, root: Path) -> None:
    """Per task: good demos, bad demos (the four bad skills in turn), random runs taken over."""
    jobs = []
    for t, task in enumerate(cfg.tasks):
        scene = INITIAL_SCENES + 1000 * t
        jobs.append((task, "good", scene, cfg.good_demos))
        for b, skill in enumerate(collect.BAD_SKILLS):
            count = cfg.bad_demos // 4 + (b < cfg.bad_demos % 4)
            jobs.append((task, skill, scene + 100 * (b + 1), count))
        jobs.append((task, "takeover", scene + 600, cfg.takeover_episodes))
    for i, (task, kind, scene, count) in enumerate(tqdm(jobs, desc="record initial data", unit="batch")):
        if count == 0:
            continue
        if kind == "takeover":
            collect.random_policy_takeovers(root, task, scene, count, cfg.horizon, seed=i)
        else:
            collect.record_demos(root, task, kind, scene, count, cfg.horizon, seed=i)


def train_sft0(cfg: DemoConfig, initial: Path, out: Path) -> Path:
    """SFT on all initial data: the shared starting policy (the 'pre-trained' checkpoint every
    method and every iteration starts from, as the paper retrains from it each iteration)."""
    base = bl.build_base(
        initial, out / "base", cfg.chunk_size, seed=0, advantage_dropout=cfg.advantage_dropout
    )
    source = load_source(initial)
    return bl.train(initial, base, bl.sft_weights(source), out / "train", cfg.sft_steps, cfg.batch_size, 0)


# --- one seed of the flywheel --------------------------------------------------------------------
def seed_runs(cfg: DemoConfig, out: Path, initial: Path, sft0: Path) -> Iterator[Run]:
    """Each seed's results as it finishes. Seeds are independent (own data, models, scenes), so
    `workers` processes run them side by side, each with `torch_threads` threads: the tiny model
    gains little from a second thread, a second seed uses the second core fully."""
    jobs = [(cfg, out / f"seed{seed}", seed, initial, sft0) for seed in range(cfg.seeds)]
    workers = min(cfg.workers, cfg.seeds)
    if workers <= 1:
        yield from (run_seed_alone(*job) for job in jobs)
        return
    # spawn, not fork: torch and MuJoCo's EGL context must not be inherited half-initialised.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(cfg.torch_threads,)) as pool:  # fmt: skip
        futures = [pool.submit(run_seed_alone, *job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def run_seed_alone(cfg: DemoConfig, folder: Path, seed: int, initial: Path, sft0: Path) -> Run:
    """One seed's flywheel into a Run of its own (picklable: it comes back from a worker)."""
    # The policy's sampling noise comes from torch's global generator: seeded here, a seed gives the
    # same results whether it runs in a worker or after other seeds in this process.
    torch.manual_seed(seed)
    part = Run(config={})
    run_seed(cfg, part, folder, seed, initial, sft0)
    return part


def run_seed(cfg: DemoConfig, run: Run, folder: Path, seed: int, initial: Path, sft0: Path) -> None:
    registry = ModelRegistry(folder / "models")
    deployed = registry.publish(sft0, kind="sft").version
    acting: int | None = None
    previous = initial
    for k in range(1, cfg.iterations + 2):
        root = folder / "data" / f"iter{k}"
        shutil.copytree(previous, root)
        method = "sft" if k == 1 else "recap"
        with stage(run, "rollouts"):
            rollouts(cfg, run, root, seed, k - 1, method, registry, deployed, acting)
        acting = deployed
        if k == cfg.iterations + 1:
            break  # the last rollouts only measure the last policy's intervention rate
        source = load_source(root)
        run.data.append({"seed": seed, "iteration": k, **dataset_counts(source)})
        deployed = iterate(cfg, run, folder / f"iter{k}", seed, k, root, source, sft0, registry, deployed)
        previous = root


def rollouts(
    cfg: DemoConfig,
    run: Run,
    root: Path,
    seed: int,
    iteration: int,
    method: str,
    registry: ModelRegistry,
    version: int,
    acting: int | None,
) -> None:
    """Rollouts of `version` (hot-swapped in) on every task, appended to the dataset at `root`."""
    for t, task in enumerate(tqdm(cfg.tasks, desc=f"seed {seed} rollouts v{version:04d}", unit="task")):
        scene = ROLLOUT_SCENES + 1000 * seed + 100 * iteration + 10_000 * t
        got = collect.deployed_rollouts(
            root,
            task,
            scene,
            cfg.rollouts_per_iteration,
            cfg.horizon,
            seed * 100 + iteration,
            registry,
            version,
            acting,
        )
        run.hotswaps.append({"seed": seed, "iteration": iteration, "task": task, **(got.deploy_reply or {})})
        run.rollouts.append(
            {
                "seed": seed,
                "iteration": iteration,
                "task": task,
                "method": method,
                "version": version,
                "episodes": got.episodes,
                "successes": got.successes,
                "frames": got.frames,
                "intervention_frames": got.intervention_frames,
                "intervention_rate": got.intervention_rate,
                "takeovers": got.takeovers,
            }
        )


def iterate(
    cfg: DemoConfig,
    run: Run,
    folder: Path,
    seed: int,
    k: int,
    root: Path,
    source: Source,
    sft0: Path,
    registry: ModelRegistry,
    deployed: int,
) -> int:
    """One RECAP iteration (label, train, publish) plus the baselines on the same data."""
    with_baselines = cfg.baselines_at == "all" or k == cfg.iterations
    trained = [m for m in bl.TRAINED if m in cfg.methods and (m == "recap" or with_baselines)]
    labeled = folder / "labeled"
    with stage(run, "label (recap)"):
        labels = label(cfg, root, labeled, seed, "recap")
    run.labels.append({"seed": seed, "iteration": k, "estimator": "recap", **label_summary(labels)})
    if k == cfg.iterations and seed == 0:
        save_label_arrays(folder.parent.parent / "labels_last.npz", source, labels)
    iql_adv = None
    if "awr" in trained:
        with stage(run, "label (iql)"):
            iql = label(cfg, root, folder / "labeled_iql", seed, "iql")
        run.labels.append({"seed": seed, "iteration": k, "estimator": "iql", **label_summary(iql)})
        iql_adv = iql.advantages
    indicator = {"recap": labels.positive}
    if "recap_gt" in trained:
        bl.write_ground_truth_labels(source, labels, folder / "labeled_gt")
        indicator["recap_gt"] = bl.ground_truth_positive(source)
    for method in tqdm(trained, desc=f"seed {seed} iteration {k} train", unit="method"):
        conditioned_on = folder / ("labeled_gt" if method == "recap_gt" else "labeled")
        data = bl.method_data(
            method, source, conditioned_on, iql_adv, indicator.get(method), cfg.recap_positive_share
        )
        with stage(run, f"train {method}"):
            policy = bl.train(
                data.dataset_root, sft0, data.weights, folder / method, cfg.method_steps, cfg.batch_size, seed
            )
        if method == "recap":
            deployed = registry.publish(policy, parent=deployed, kind="recap").version
            evaluate(cfg, run, folder / "eval" / method, policy, method, seed, k)
            if "recap_cfg" in cfg.methods:
                guided = bl.with_cfg_scale(policy, folder / "recap_cfg", cfg.cfg_scale)
                evaluate(cfg, run, folder / "eval" / "recap_cfg", guided, "recap_cfg", seed, k)
        else:
            evaluate(cfg, run, folder / "eval" / method, policy, method, seed, k)
    return deployed


def label(cfg: DemoConfig, root: Path, out: Path, seed: int, estimator: str) -> Labels:
    label_cfg = LabelConfig()
    label_cfg.dataset.root, label_cfg.output.root = root, out
    label_cfg.advantage.estimator = estimator
    label_cfg.value.steps = cfg.value_steps
    label_cfg.value.cross_fit_folds = cfg.cross_fit_folds
    label_cfg.value.seed = seed
    label_cfg.value.torch_threads = cfg.torch_threads
    label_cfg.threshold.mode = cfg.threshold_mode
    label_cfg.threshold.positive_fraction = cfg.positive_fraction
    label_cfg.iql.steps = cfg.iql_steps
    return run_labeling(label_cfg)


def evaluate(
    cfg: DemoConfig, run: Run, folder: Path, policy: Path, method: str, seed: int | None, iteration: int
) -> None:
    """Every task's held-out scenes, many at a time (trainer/evaluate_batched.py: the daemon's scenes
    and rules); each scene's outcome goes to folder/<task>.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for task in tqdm(cfg.tasks, desc=f"evaluate {method} (seed {seed}, iteration {iteration})", unit="task"):
        began = time.perf_counter()
        scenes = scenes_batched(
            policy, task, cfg.eval_episodes, EVAL_SEED_OFFSET, cfg.horizon, DEFAULT_BATCH_SIZE
        )
        result = summarize_scenes(scenes.outcomes, cfg.horizon)
        (folder / f"{task}.json").write_text(json.dumps([asdict(o) for o in scenes.outcomes]))
        run.time("evaluate", time.perf_counter() - began)
        run.evaluations.append(
            {"seed": seed, "iteration": iteration, "method": method, "task": task, **_finite(asdict(result))}
        )
        log.info("%s seed %s iteration %d %s: %s", method, seed, iteration, task, result.line())


# --- bookkeeping ---------------------------------------------------------------------------------
def dataset_counts(source: Source) -> dict:
    types = source.episodes.data_type
    quality = bl.frame_quality(source)
    return {
        "episodes": len(source.episodes),
        "frames": len(source.frames),
        "episodes_by_type": {t: types.count(t) for t in ("demo", "auto", "intervention")},
        "successful_episodes": int(source.episodes.success.sum()),
        "intervention_frames": int((source.frame_data_type_ids() == 2).sum()),
        "good_demo_frames": int((quality == "good").sum()),
        "bad_demo_frames": int((quality == "bad").sum()),
    }


def label_summary(labels: Labels) -> dict:
    report = labels.report
    return {
        "positive_fraction_non_forced": report.get("positive_fraction_non_forced"),
        "forced_positive_frames": report.get("forced_positive_frames"),
        "value_mae_vs_mc_return": report.get("value_mae_vs_mc_return"),
        "label_quality": report.get("label_quality"),
        "wall_time_s": report.get("wall_time_s"),
    }


def save_label_arrays(path: Path, source: Source, labels: Labels) -> None:
    """What the report's value and advantage figures need from the last labeling (seed 0)."""
    np.savez_compressed(
        path,
        values=labels.values,
        advantages=labels.advantages,
        positive=labels.positive,
        episode=source.frames.episode,
        frame_index=source.frames.frame_index,
        intervention=source.frames.intervention,
        frame_type=source.frame_data_type_ids(),
        quality=bl.frame_quality(source).astype(str),
        episode_success=source.episodes.success,
        episode_data_type=np.asarray(source.episodes.data_type, dtype=str),
        episode_task=np.asarray(source.episodes.task, dtype=str),
    )


def save_results(run: Run, out: Path, wall_time_s: float) -> dict:

    results = {
        "schema_version": SCHEMA_VERSION,
        "config": run.config,
        "started_at": run.started_at,
        "wall_time_s": round(wall_time_s, 1),
        "load_average": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "timings_s": run.timings_s,
        "data": run.data,
        "evaluations": run.evaluations,
        "rollouts": run.rollouts,
        "labels": run.labels,
        "hotswaps": run.hotswaps,
        "summary": summarize(run.evaluations, run.rollouts),
        "figures": run.figures,
        "rerun": run.rerun,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    return results


def _finite(row: dict) -> dict:
    """JSON has no NaN: an undefined mean (no success) is written as null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


def _plain(tree: dict) -> dict:
    return {
        k: _plain(v) if isinstance(v, dict) else (str(v) if isinstance(v, Path) else v)
        for k, v in tree.items()
    }
