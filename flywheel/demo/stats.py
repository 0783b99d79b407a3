"""The demo's numbers: intervals (Student's t, Wilson), the evaluation rows pooled into one summary
row per (iteration, method, task), and the flywheel curve of the deployed policy, as typed rows.

Inputs are the rows flywheel/demo/run.py collects (evaluations, rollouts: dicts, as in
results.json); the summary goes back into results.json as dicts (SummaryRow.to_json).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

ALL_TASKS = "all"
# sft, then the methods in the order of the issue: the order of the summary's rows
METHOD_ORDER = ("sft", "sft_all", "filtered_sft", "awr", "recap", "recap_cfg", "recap_gt", "good_only")

Bounds = list  # [low, high], either None when unknown (lists, as in results.json)


def interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and Student-t 95% interval (None with fewer than two values)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a success rate (sound at 0 and 1, where the normal one collapses)."""
    if n == 0:
        return float("nan"), float("nan")
    z, p = 1.959964, successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def apart(a: Bounds, b: Bounds) -> bool:
    """Two intervals that do not overlap (unknown ones are not called apart)."""
    if None in a or None in b:
        return False
    return a[1] < b[0] or b[1] < a[0]


@dataclass
class Pooled:
    """Evaluation rows (any seeds and tasks) as one set of held-out episodes."""

    episodes: int
    seeds: list
    success_per_seed: list[float]
    success_mean: float
    success_ci95: Bounds  # Wilson's
    steps_to_success_mean: float | None
    mean_steps_mean: float  # failures count as the horizon
    mean_steps_ci95: Bounds  # normal


def pooled(rows: list[dict]) -> Pooled:
    """The success rate with its Wilson interval, steps to success, and steps per episode (failures =
    horizon) with a normal interval; the per-seed rates alongside, for the spread between seeds."""
    successes = np.concatenate([np.asarray(r["scene_successes"], dtype=bool) for r in rows])
    steps = np.concatenate([np.asarray(r["scene_steps"], dtype=float) for r in rows])
    n, hits = len(successes), int(successes.sum())
    per_seed: dict = defaultdict(list)
    for r in rows:
        per_seed[r["seed"]] += r["scene_successes"]
    half = 1.96 * float(steps.std(ddof=1)) / np.sqrt(n) if n > 1 else None
    return Pooled(
        episodes=n,
        seeds=sorted(per_seed, key=str),
        success_per_seed=[float(np.mean(per_seed[s])) for s in sorted(per_seed, key=str)],
        success_mean=hits / n,
        success_ci95=list(wilson(hits, n)),
        steps_to_success_mean=float(steps[successes].mean()) if hits else None,
        mean_steps_mean=float(steps.mean()),
        mean_steps_ci95=[None, None] if half is None else [steps.mean() - half, steps.mean() + half],
    )


@dataclass
class SummaryRow:
    """One (iteration, method, task) of results.json's summary: every seed's held-out episodes pooled,
    and the intervention rate of that policy's rollouts, if deployed. Field order is the JSON's."""

    iteration: int
    method: str
    task: str  # a task, or ALL_TASKS
    episodes: int
    seeds: list
    success_per_seed: list[float]
    success_mean: float
    success_ci95: Bounds
    steps_to_success_mean: float | None
    mean_steps_mean: float
    mean_steps_ci95: Bounds
    intervention_rate_mean: float | None

    def to_json(self) -> dict:
        return asdict(self)


def episode_rates(rows: list[dict]) -> tuple[list[float], list[float]]:
    """Rollout rows as their episodes: each one's intervention rate and takeovers."""
    rates = [x for r in rows for x in r.get("episode_intervention_rates", [])]
    takeovers = [float(x) for r in rows for x in r.get("episode_takeovers", [])]
    return rates, takeovers


def summary_rows(evaluations: list[dict], rollouts: list[dict]) -> list[SummaryRow]:
    """One row per (iteration, method, task), task ALL_TASKS pooling the tasks."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in evaluations:
        for task in (row["task"], ALL_TASKS):
            groups[(row["iteration"], row["method"], task)].append(row)
    deployed: dict[tuple, list[dict]] = defaultdict(list)
    for row in rollouts:
        for task in (row["task"], ALL_TASKS):
            deployed[(row["iteration"], row["method"], task)].append(row)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], METHOD_ORDER.index(k[1]), k[2] != ALL_TASKS, k[2])):
        rates, _ = episode_rates(deployed.get(key, []))
        iteration, method, task = key
        rows.append(
            SummaryRow(
                iteration=iteration,
                method=method,
                task=task,
                **asdict(pooled(groups[key])),
                intervention_rate_mean=float(np.mean(rates)) if rates else None,
            )
        )
    return rows


def summarize(evaluations: list[dict], rollouts: list[dict]) -> list[dict]:
    """results.json's summary: summary_rows as JSON objects."""
    return [row.to_json() for row in summary_rows(evaluations, rollouts)]


def rows_of(results: dict, task: str, iteration: int | None = None) -> list[SummaryRow]:
    """results.json's summary rows of one task (and iteration, unless None)."""
    return [
        SummaryRow(**r)
        for r in results["summary"]
        if r["task"] == task and (iteration is None or r["iteration"] == iteration)
    ]


@dataclass
class CurveRow:
    """The deployed policy after one iteration, all tasks, every seed pooled."""

    iteration: int
    policies: list[str]
    versions: list[int]  # per seed
    success_mean: float | None
    success_ci95: Bounds
    success_episodes: int
    steps_to_success_mean: float | None
    rollout_episodes: int
    intervention_rate_mean: float
    intervention_rate_ci95: Bounds
    takeovers_per_episode_mean: float
    takeovers_per_episode_ci95: Bounds


def flywheel_curve(results: dict) -> list[CurveRow]:
    """The deployed policy after each iteration (0: the SFT), all tasks, every seed pooled: its
    held-out success and steps to success (the evaluation of that seed's deployed version), and in
    its rollouts with the operator at the pedal, per episode the share of frames the operator
    drove and the takeovers (mean and 95% interval over the episodes)."""
    evaluated: dict[tuple, list[dict]] = defaultdict(list)
    for row in results["evaluations"]:
        if row.get("version") is not None:
            evaluated[(row["seed"], row["version"])].append(row)
    by_iteration: dict[int, list[dict]] = defaultdict(list)
    for row in results["rollouts"]:
        by_iteration[row["iteration"]].append(row)
    curve = []
    for iteration in sorted(by_iteration):
        rows = by_iteration[iteration]
        versions = sorted({(r["seed"], r["version"]) for r in rows}, key=str)
        evaluations = [e for key in versions for e in evaluated.get(key, [])]
        rates, takeovers = episode_rates(rows)
        rate, per_episode = interval(rates), interval(takeovers)
        success = pooled(evaluations) if evaluations else None
        curve.append(
            CurveRow(
                iteration=iteration,
                policies=sorted({r["method"] for r in rows}),
                versions=[v for _, v in versions],
                success_mean=success.success_mean if success else None,
                success_ci95=success.success_ci95 if success else [None, None],
                success_episodes=success.episodes if success else 0,
                steps_to_success_mean=success.steps_to_success_mean if success else None,
                rollout_episodes=len(rates),
                intervention_rate_mean=rate[0],
                intervention_rate_ci95=[rate[1], rate[2]],
                takeovers_per_episode_mean=per_episode[0],
                takeovers_per_episode_ci95=[per_episode[1], per_episode[2]],
            )
        )
    return curve
