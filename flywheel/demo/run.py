"""`flywheel demo`: the whole flywheel improving a policy on the simulated arm, with evidence.

    initial data   operator demos of mixed quality + random-policy runs the good operator takes
                   over, recorded by the rollout daemon (lockstep, in-process)
    iteration 0    SFT of pi_star_recap (tiny) on the initial data: the shared starting policy
    per seed, a chain of iterations k = 1..K (one job):
        rollouts   the deployed policy, hot-swapped into the daemon over ZeroMQ; the simulated good
                   operator takes over with the pedal when the arm stalls or drifts
        label      value function, advantages, indicator (flywheel.recap)
        train      RECAP from the iteration-0 policy on all data so far (as the paper retrains from
                   its pre-trained model each iteration)
        evaluate   held-out scenes: success, steps to success (failures = horizon)
        gate       the candidate is deployed only if, on gate scenes of their own, it is not worse
        the last deployed policy runs one more batch of rollouts: its intervention rate
    per seed and baseline (one job each, once the seed's chain is done): the other methods on the
                   last iteration's data, from the same iteration-0 policy, same steps, evaluated
    report         results.json, report.md, figures/*.png, demo.rrd (docs/demo.md)

Jobs run in `workers` processes (both cores); the chains go first, each seed's baselines as soon
as its chain is done. Entry point: `demo_main(DemoConfig) -> int` (0 done, 2 bad configuration or
output folder).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flywheel.contracts.dataset import DataType, FrameType
from flywheel.contracts.registry import ModelRegistry
from flywheel.demo import baselines as bl
from flywheel.demo import collect
from flywheel.demo.config import METHODS, DemoConfig
from flywheel.demo.markdown import results_table
from flywheel.demo.report import check_results, write_report
from flywheel.demo.stats import ALL_TASKS, rows_of, summarize
from flywheel.policies.pi_star_recap.conditioning import report_conditioning
from flywheel.recap.labeling import LabelConfig, Labels, run_labeling
from flywheel.recap.source import Source, load_source
from trainer.evaluate import EVAL_SEED_OFFSET, summarize_scenes
from trainer.evaluate_batched import DEFAULT_BATCH_SIZE, scenes_batched

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Scene seeds: initial data, rollouts and evaluation never share a scene.
INITIAL_SCENES = 0
ROLLOUT_SCENES = 10_000
GATE_SCENES = 200_000  # the gate's own scenes: the reported evaluation uses EVAL_SEED_OFFSET (100000+)


@dataclass
class Run:
    """Results of the whole demo, written to results.json (schema: docs/demo.md)."""

    config: dict
    started_at: float = field(default_factory=time.time)
    evaluations: list[dict] = field(default_factory=list)
    rollouts: list[dict] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    hotswaps: list[dict] = field(default_factory=list)
    gates: list[dict] = field(default_factory=list)
    data: list[dict] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    rerun: str | None = None
    chain_of: int | None = None  # the seed, in the Run a seed's chain returns

    def time(self, stage: str, seconds: float) -> None:
        self.timings_s[stage] = round(self.timings_s.get(stage, 0.0) + seconds, 2)

    def absorb(self, part: Run) -> None:
        """Add one seed's results, run in another process (stage times add up over processes)."""
        for name in ("evaluations", "rollouts", "labels", "hotswaps", "gates", "data"):
            rows = getattr(self, name)
            rows.extend(getattr(part, name))
            rows.sort(key=_seed_order)  # completion order varies; results.json does not
        for stage_name, seconds in part.timings_s.items():
            self.time(stage_name, seconds)


def _seed_order(row: dict) -> tuple:
    """Shared rows (seed None: the initial data) first, then by seed, iteration and method (the
    order jobs finish in varies; results.json does not)."""
    seed = -1 if row.get("seed") is None else int(row["seed"])
    method = row.get("method") or row.get("estimator") or ""
    order = list(METHODS).index(method) if method in METHODS else -1
    return (seed, row.get("iteration", 0), order, str(row.get("task", "")))


def configure_logging() -> None:
    """The demo's progress lines, in the main process and in every worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("flywheel.demo").setLevel(logging.INFO)  # even when an import configured logging
    # The daemon logs every episode and takeover: hundreds of lines here.
    for noisy in ("flywheel.rollout", "trainer.train_policy", "flywheel.recap", "robots.sim"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _start_worker(torch_threads: int) -> None:
    configure_logging()
    torch.set_num_threads(torch_threads)


def demo_main(cfg: DemoConfig) -> int:
    configure_logging()
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
    jobs = cfg.seeds * len(cfg.methods)  # a chain per seed (recap), a job per other method and seed
    for part in tqdm(run_jobs(cfg, out, initial, sft0), total=jobs, desc="demo jobs", unit="job"):
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


# --- jobs: each seed's chain of iterations, then its baselines ----------------------------------
def run_jobs(cfg: DemoConfig, out: Path, initial: Path, sft0: Path) -> Iterator[Run]:
    """Every job's Run as it finishes: the seeds' chains first, each seed's baselines once its chain
    is done. `workers` processes, each with `torch_threads` threads: the tiny model gains little
    from a second thread, a second job uses the second core fully."""
    chains = [(seed_chain, cfg, out / f"seed{seed}", seed, initial, sft0) for seed in range(cfg.seeds)]
    if cfg.workers <= 1:
        pending = list(chains)
        while pending:
            job = pending.pop(0)
            part = job[0](*job[1:])
            pending += baseline_jobs(cfg, out, part, sft0)
            yield part
        return
    # spawn, not fork: torch and MuJoCo's EGL context must not be inherited half-initialised.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=context, initializer=_start_worker,
                             initargs=(cfg.torch_threads,)) as pool:  # fmt: skip
        running = {pool.submit(*job) for job in chains}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                part = future.result()
                running |= {pool.submit(*job) for job in baseline_jobs(cfg, out, part, sft0)}
                yield part


def baseline_jobs(cfg: DemoConfig, out: Path, part: Run, sft0: Path) -> list[tuple]:
    """After a seed's chain: one job per baseline on its last data (none after a baseline job)."""
    if part.chain_of is None:
        return []
    seed = part.chain_of
    methods = [m for m in cfg.methods if m != "recap"]  # recap is the chain's own
    return [(baseline, cfg, out / f"seed{seed}", seed, method, sft0) for method in methods]


def _job_seed(seed: int, method: str = "recap") -> None:
    """The policy's sampling noise comes from torch's global generator: seeded per job, a job gives
    the same results whichever process runs it, in whatever order."""
    torch.manual_seed(1000 * seed + list(METHODS).index(method))


def seed_chain(cfg: DemoConfig, folder: Path, seed: int, initial: Path, sft0: Path) -> Run:
    """One seed's flywheel: the iteration-0 policy evaluated, then K iterations of rollouts, label,
    train, evaluate, gate; the last deployed policy's rollouts."""
    _job_seed(seed)
    run = Run(config={}, chain_of=seed)
    registry = ModelRegistry(folder / "models")
    deployed = registry.publish(sft0, kind="sft").version
    evaluate(cfg, run, folder / "eval" / "sft0", sft0, "sft", seed, 0, deployed)
    acting: int | None = None
    previous = initial
    episodes_before = len(load_source(initial).episodes)  # then carried over from each iteration's read
    for k in range(1, cfg.iterations + 2):
        root = folder / "data" / f"iter{k}"
        shutil.copytree(previous, root)
        method = "sft" if deployed == 1 else "recap"
        with stage(run, "rollouts"):
            rollouts(cfg, run, root, seed, k - 1, method, registry, deployed, acting)
        acting = deployed
        if k == cfg.iterations + 1:
            break  # the last rollouts only measure the last policy's intervention rate
        source = load_source(root)
        run.data.append({"seed": seed, "iteration": k, **dataset_counts(source)})
        new_episodes = list(range(episodes_before, len(source.episodes)))
        episodes_before = len(source.episodes)
        deployed = iterate(
            cfg, run, folder / f"iter{k}", seed, k, root, source, sft0, registry, deployed, new_episodes
        )
        previous = root
    return run


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
                "episode_intervention_rates": got.episode_intervention_rates,
                "episode_takeovers": got.episode_takeovers,
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
    new_episodes: list[int],
) -> int:
    """One RECAP iteration: label, train from the iteration-0 policy, evaluate, gate, publish.
    Returns the version deployed for the next iteration's rollouts."""
    with stage(run, "label (recap)"):
        labels = label(cfg, root, folder / "labeled", seed, "recap")
    summary = {"seed": seed, "iteration": k, "estimator": "recap", **label_summary(labels)}
    if k > 1:  # the previous iteration's RECAP model on episodes it never trained on
        with stage(run, "conditioning"):
            summary["conditioning"] = conditioning(folder.parent / f"iter{k - 1}", folder, new_episodes)
    run.labels.append(summary)
    if k == cfg.iterations:
        if seed == 0:
            save_label_arrays(folder.parent.parent / "labels_last.npz", source, labels)
        if "recap_gt" in cfg.methods:  # the ground-truth twin of these labels, for its baseline job
            bl.write_ground_truth_labels(source, labels, folder / "labeled_gt")
    share = cfg.recap_positive_share
    data = bl.method_data("recap", source, folder / "labeled", None, labels.positive, share)
    with stage(run, "train recap"):
        policy = bl.train(
            data.dataset_root, sft0, data.weights, folder / "recap", cfg.method_steps, cfg.batch_size, seed
        )
    candidate = registry.publish(policy, parent=deployed, kind="recap").version
    evaluate(cfg, run, folder / "eval" / "recap", policy, "recap", seed, k, candidate)
    with stage(run, "gate"):
        decision = gate(cfg, registry, deployed, candidate)
    run.gates.append({"seed": seed, "iteration": k, "current": deployed, "candidate": candidate, **decision})
    log.info(
        "seed %d iteration %d gate: candidate v%04d %d of %d scenes, deployed v%04d %d: %s",
        seed, k, candidate, decision["candidate_successes"], decision["scenes"], deployed,
        decision["current_successes"], "deploy the candidate" if decision["passed"] else "keep the deployed",
    )  # fmt: skip
    return candidate if decision["passed"] else deployed


def conditioning(trained_in: Path, labeled_in: Path, episodes: list[int]) -> dict | None:
    """How much the RECAP model trained in `trained_in` uses its indicator (the conditioning
    diagnostic: flow loss with each frame's indicator flipped minus its own, as a share of it) on
    `episodes`, this iteration's new rollouts, with this iteration's labels."""
    strength = report_conditioning(
        trained_in / "recap" / "pretrained_model",
        labeled_in / "labeled",
        episodes,
        out_json=labeled_in / "conditioning.json",
        context={"model": str(trained_in / "recap"), "episodes": episodes},
        max_frames=128,
        draws=2,
    )
    return None if strength is None else strength.as_dict()


def gate(cfg: DemoConfig, registry: ModelRegistry, current: int, candidate: int) -> dict:
    """The trainer's sim gate (trainer/gate.py's rule): the candidate goes out unless it succeeds
    on fewer of the gate scenes, which neither training nor the reported evaluation uses."""
    successes = {}
    for name, version in (("current", current), ("candidate", candidate)):
        outcomes = [
            o
            for task in cfg.tasks
            for o in scenes_batched(
                registry.path(version), task, cfg.gate_episodes, GATE_SCENES, cfg.horizon, DEFAULT_BATCH_SIZE
            ).outcomes
        ]
        successes[name] = sum(o.success for o in outcomes)
    scenes = cfg.gate_episodes * len(cfg.tasks)
    passed = successes["candidate"] >= successes["current"] - round(cfg.gate_tolerance * scenes)
    return {"passed": passed, "scenes": scenes, **{f"{k}_successes": v for k, v in successes.items()}}


def baseline(cfg: DemoConfig, folder: Path, seed: int, method: str, sft0: Path) -> Run:
    """One method on the seed's last iteration's data, from the iteration-0 policy, the same steps
    as RECAP; recap_cfg is the last RECAP model evaluated with guidance."""
    _job_seed(seed, method)
    run = Run(config={})
    k = cfg.iterations
    last = folder / f"iter{k}"
    if method == "recap_cfg":
        guided = bl.with_cfg_scale(last / "recap" / "pretrained_model", last / "recap_cfg", cfg.cfg_scale)
        evaluate(cfg, run, last / "eval" / method, guided, method, seed, k)
        return run
    source = load_source(folder / "data" / f"iter{k}")
    iql_advantages, positive = None, None
    if method == "awr":
        with stage(run, "label (iql)"):
            iql = label(cfg, source.root, last / "labeled_iql", seed, "iql")
        run.labels.append({"seed": seed, "iteration": k, "estimator": "iql", **label_summary(iql)})
        iql_advantages = iql.advantages
    if method == "recap_gt":
        positive = bl.ground_truth_positive(source)
    conditioned_on = last / ("labeled_gt" if method == "recap_gt" else "labeled")
    data = bl.method_data(method, source, conditioned_on, iql_advantages, positive, cfg.recap_positive_share)
    with stage(run, f"train {method}"):
        policy = bl.train(
            data.dataset_root, sft0, data.weights, last / method, cfg.method_steps, cfg.batch_size, seed
        )
    evaluate(cfg, run, last / "eval" / method, policy, method, seed, k)
    return run


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
    cfg: DemoConfig,
    run: Run,
    folder: Path,
    policy: Path,
    method: str,
    seed: int,
    iteration: int,
    version: int | None = None,
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
            {
                "seed": seed,
                "iteration": iteration,
                "method": method,
                "task": task,
                "version": version,
                **_finite(asdict(result)),
                # per scene, for intervals pooled over seeds and scenes (stats.py)
                "scene_successes": [bool(o.success) for o in scenes.outcomes],
                "scene_steps": [o.steps if o.success else cfg.horizon for o in scenes.outcomes],
            }
        )
        log.info("%s seed %s iteration %d %s: %s", method, seed, iteration, task, result.line())


# --- bookkeeping ---------------------------------------------------------------------------------
def dataset_counts(source: Source) -> dict:
    types = source.episodes.data_type
    quality = bl.frame_quality(source)
    return {
        "episodes": len(source.episodes),
        "frames": len(source.frames),
        "episodes_by_type": {str(t): types.count(t) for t in DataType},
        "successful_episodes": int(source.episodes.success.sum()),
        "intervention_frames": int((source.frame_data_type_ids() == FrameType.INTERVENTION).sum()),
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
        "gates": run.gates,
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
