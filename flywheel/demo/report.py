"""The demo's evidence on disk: report.md with its figures and Rerun recording (write_report), and the
self-check of a finished run (check_results).

The pieces: flywheel.demo.stats (intervals, the summary and the flywheel curve as typed rows),
flywheel.demo.markdown (report.md's text), flywheel.demo.figures (matplotlib) and
flywheel.demo.rerun_log (demo.rrd).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flywheel.demo.figures import plot_advantage_histograms, plot_metrics, plot_value_curves
from flywheel.demo.markdown import markdown, table_row_start
from flywheel.demo.rerun_log import write_rerun
from flywheel.demo.stats import ALL_TASKS, SummaryRow, rows_of, summarize


def write_report(results: dict, out: Path, figures_too: bool = True) -> tuple[list[str], str | None]:
    """report.md (and, unless figures_too is False, the figures and demo.rrd): their names."""
    if not figures_too:
        names, rerun = results["figures"], results["rerun"]
    else:
        figures = out / "figures"
        figures.mkdir(exist_ok=True)
        names = plot_metrics(results, figures)
        labels_file = out / "labels_last.npz"
        if labels_file.exists():
            arrays = dict(np.load(labels_file, allow_pickle=False))
            names += plot_value_curves(arrays, figures / "value_curves.png")
            names += plot_advantage_histograms(arrays, figures / "advantage_histograms.png")
        rerun = write_rerun(results, out)
    (out / "report.md").write_text(markdown(results, names, rerun))
    return names, rerun


def check_results(results: dict, out: Path) -> list[str]:
    """Internal consistency of a finished run: what is wrong, or [] (the test of --quick uses it)."""
    problems = [
        f"evaluation {i}: {p}" for i, row in enumerate(results["evaluations"]) for p in _check_eval(row)
    ]
    if results["summary"] != summarize(results["evaluations"], results["rollouts"]):
        problems.append("summary: differs from the summary recomputed from the evaluations")
    seeds = list(range(results["config"]["seeds"]))
    for row in (SummaryRow(**r) for r in results["summary"]):
        if row.seeds != seeds:
            problems.append(f"summary {row.method}/{row.task}: seeds {row.seeds}, expected {seeds}")
    for row in results["rollouts"]:
        if not 0 <= row["intervention_frames"] <= row["frames"]:
            problems.append(f"rollouts: {row['intervention_frames']} of {row['frames']} frames")
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    if not report:
        problems.append("report.md: missing")
    for name in results.get("figures") or []:
        if not (out / "figures" / name).exists():
            problems.append(f"figures/{name}: missing")
    for row in rows_of(results, ALL_TASKS):
        if table_row_start(row) not in report:
            problems.append(f"report.md: no row for {row.method} at iteration {row.iteration}")
    return problems


def _check_eval(row: dict) -> list[str]:
    success, steps, horizon = row["success_rate"], row["mean_steps"], row["horizon"]
    to_success = row["mean_steps_to_success"]
    problems = []
    if not 0.0 <= success <= 1.0:
        problems.append(f"success_rate {success} outside [0, 1]")
    if not 0 < steps <= horizon:
        problems.append(f"mean_steps {steps} outside (0, {horizon}]")
    if (success > 0) != (to_success is not None):
        problems.append(f"mean_steps_to_success {to_success} with success {success}")
    # Failures count as the horizon: the mean of the two kinds of episode, weighted by the rate.
    expected = success * (to_success or 0.0) + (1 - success) * horizon
    if abs(expected - steps) > 1e-6 * horizon:
        problems.append(f"mean_steps {steps} != {expected} from the success rate and steps to success")
    return problems
