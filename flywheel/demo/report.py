"""The demo's evidence: the summary table (mean and 95% interval over seeds), report.md, figures,
and a Rerun recording of the last iteration's labeled episodes."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

log = logging.getLogger(__name__)

ALL_TASKS = "all"
COLORS = {
    "sft": "black",
    "sft_all": "tab:gray",
    "filtered_sft": "tab:orange",
    "awr": "tab:purple",
    "recap": "tab:blue",
    "recap_cfg": "tab:cyan",
    "recap_gt": "tab:olive",
    "good_only": "tab:green",
}
METHOD_TEXT = {
    "sft": "SFT on the initial data (iteration 0, every method starts here)",
    "sft_all": "(a) SFT on all data",
    "filtered_sft": "(b) filtered SFT (successful episodes + interventions)",
    "awr": "(c) IQL/AWR weighting",
    "recap": "(d) RECAP advantage conditioning",
    "recap_cfg": "(d) RECAP + CFG",
    "recap_gt": "(f) RECAP with the sim's ground-truth labels (the labels' ceiling)",
    "good_only": "(e) good operator's demos only (ceiling)",
}


# --- numbers -------------------------------------------------------------------------------------
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


def pooled(rows: list[dict]) -> dict:
    """Evaluation rows (any seeds and tasks) as one set of held-out episodes: the success rate with
    its Wilson interval, steps to success, and steps per episode (failures = horizon) with a normal
    interval; the per-seed rates alongside, for the spread between seeds."""
    successes = np.concatenate([np.asarray(r["scene_successes"], dtype=bool) for r in rows])
    steps = np.concatenate([np.asarray(r["scene_steps"], dtype=float) for r in rows])
    n, hits = len(successes), int(successes.sum())
    per_seed: dict = defaultdict(list)
    for r in rows:
        per_seed[r["seed"]] += r["scene_successes"]
    half = 1.96 * float(steps.std(ddof=1)) / np.sqrt(n) if n > 1 else None
    return {
        "episodes": n,
        "seeds": sorted(per_seed, key=str),
        "success_per_seed": [float(np.mean(per_seed[s])) for s in sorted(per_seed, key=str)],
        "success_mean": hits / n,
        "success_ci95": list(wilson(hits, n)),
        "steps_to_success_mean": float(steps[successes].mean()) if hits else None,
        "mean_steps_mean": float(steps.mean()),
        "mean_steps_ci95": [None, None] if half is None else [steps.mean() - half, steps.mean() + half],
    }


def _episode_rates(rows: list[dict]) -> tuple[list[float], list[float]]:
    """Rollout rows as their episodes: each one's intervention rate and takeovers."""
    rates = [x for r in rows for x in r.get("episode_intervention_rates", [])]
    takeovers = [float(x) for r in rows for x in r.get("episode_takeovers", [])]
    return rates, takeovers


def summarize(evaluations: list[dict], rollouts: list[dict]) -> list[dict]:
    """One row per (iteration, method, task), task 'all' pooling the tasks: every seed's held-out
    episodes pooled (pooled()), and the intervention rate of that policy's rollouts, if deployed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in evaluations:
        for task in (row["task"], ALL_TASKS):
            groups[(row["iteration"], row["method"], task)].append(row)
    deployed: dict[tuple, list[dict]] = defaultdict(list)
    for row in rollouts:
        for task in (row["task"], ALL_TASKS):
            deployed[(row["iteration"], row["method"], task)].append(row)
    order = list(COLORS)  # sft, then the methods in the order of the issue
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], order.index(k[1]), k[2] != ALL_TASKS, k[2])):
        rates, _ = _episode_rates(deployed.get(key, []))
        iteration, method, task = key
        rows.append(
            {
                "iteration": iteration,
                "method": method,
                "task": task,
                **pooled(groups[key]),
                "intervention_rate_mean": float(np.mean(rates)) if rates else None,
            }
        )
    return rows


def flywheel_curve(results: dict) -> list[dict]:
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
        rates, takeovers = _episode_rates(rows)
        rate, per_episode = interval(rates), interval(takeovers)
        success = pooled(evaluations) if evaluations else None
        curve.append(
            {
                "iteration": iteration,
                "policies": sorted({r["method"] for r in rows}),
                "versions": [v for _, v in versions],
                "success_mean": success["success_mean"] if success else None,
                "success_ci95": success["success_ci95"] if success else [None, None],
                "success_episodes": success["episodes"] if success else 0,
                "steps_to_success_mean": success["steps_to_success_mean"] if success else None,
                "rollout_episodes": len(rates),
                "intervention_rate_mean": rate[0],
                "intervention_rate_ci95": [rate[1], rate[2]],
                "takeovers_per_episode_mean": per_episode[0],
                "takeovers_per_episode_ci95": [per_episode[1], per_episode[2]],
            }
        )
    return curve


def curve_verdicts(curve: list[dict]) -> list[str]:
    """The flywheel's two claims, first against last iteration, in plain sentences."""
    if len(curve) < 2 or curve[0]["success_mean"] is None or curve[-1]["success_mean"] is None:
        return ["Fewer than two evaluated iterations: no trend to state."]
    first, last = curve[0], curve[-1]
    rise = (last["success_mean"] - first["success_mean"]) * 100
    apart = _apart(first["success_ci95"], last["success_ci95"])
    lines = [
        f"- Success from iteration 0 to {last['iteration']}: {first['success_mean']:.2f} -> "
        f"{last['success_mean']:.2f} ({rise:+.0f} points; the 95% intervals "
        f"{'do not overlap' if apart else 'overlap: not a reliable difference'})."
    ]
    if first["intervention_rate_mean"]:
        ratio = last["intervention_rate_mean"] / first["intervention_rate_mean"]
        apart = _apart(first["intervention_rate_ci95"], last["intervention_rate_ci95"])
        lines.append(
            f"- Intervention rate: {first['intervention_rate_mean']:.2f} -> "
            f"{last['intervention_rate_mean']:.2f} ({ratio:.2f} of the first; the 95% intervals "
            f"{'do not overlap' if apart else 'overlap: not a reliable difference'})."
        )
    return lines


def _apart(a: list, b: list) -> bool:
    """Two intervals that do not overlap (unknown ones are not called apart)."""
    if None in a or None in b:
        return False
    return a[1] < b[0] or b[1] < a[0]


def curve_table(curve: list[dict]) -> list[str]:
    lines = [
        "| iteration | deployed (versions per seed) | success (held-out) | 95% interval "
        "| steps to success | intervention rate | 95% interval | takeovers per episode "
        "| 95% interval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in curve:
        deployed = f"{'/'.join(r['policies'])} (v{', v'.join(str(v) for v in r['versions'])})"
        lines.append(
            f"| {r['iteration']} | {deployed} | {_fmt(r['success_mean'])} | {_ci(r['success_ci95'])} "
            f"| {_fmt(r['steps_to_success_mean'], 1)} | {_fmt(r['intervention_rate_mean'])} "
            f"| {_ci(r['intervention_rate_ci95'])} | {_fmt(r['takeovers_per_episode_mean'])} "
            f"| {_ci(r['takeovers_per_episode_ci95'])} |"
        )
    return lines


# --- report --------------------------------------------------------------------------------------
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


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(pair: list) -> str:
    return "–" if pair[0] is None else f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def rows_of(results: dict, task: str, iteration: int | None = None) -> list[dict]:
    return [
        r
        for r in results["summary"]
        if r["task"] == task and (iteration is None or r["iteration"] == iteration)
    ]


def results_table(rows: list[dict]) -> list[str]:
    lines = [
        "| iteration | method | success | 95% interval | episodes | per seed | steps to success "
        "| steps (failures = horizon) | intervention rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = " ".join(f"{s:.2f}" for s in r["success_per_seed"])
        lines.append(
            f"| {r['iteration']} | {r['method']} | {r['success_mean']:.2f} | {_ci(r['success_ci95'])} "
            f"| {r['episodes']} | {per_seed} | {_fmt(r['steps_to_success_mean'], 1)} "
            f"| {r['mean_steps_mean']:.1f} {_ci(r['mean_steps_ci95'])} "
            f"| {_fmt(r['intervention_rate_mean'])} |"
        )
    return lines


def verdicts(results: dict) -> list[str]:
    """RECAP (and RECAP+CFG) against every other method on the last iteration, all tasks, in plain
    sentences: a difference is called real only when the 95% intervals do not overlap."""
    last = max((r["iteration"] for r in results["summary"]), default=0)
    rows = {r["method"]: r for r in rows_of(results, ALL_TASKS, last)}
    if "recap" not in rows:
        return ["RECAP was not run."]
    lines = []
    for mine in ("recap", "recap_cfg"):
        if mine not in rows:
            continue
        ours = rows[mine]
        for method, other in rows.items():
            if method in ("recap", "recap_cfg"):
                continue
            diff = ours["success_mean"] - other["success_mean"]
            gap = (
                f"level with {method}"
                if abs(diff) < 0.005
                else f"{abs(diff) * 100:.0f} points {'above' if diff > 0 else 'below'} {method}"
            )
            sure = (
                "the intervals do not overlap"
                if _apart(ours["success_ci95"], other["success_ci95"])
                else "the intervals overlap: not a reliable difference"
            )
            pairs = zip(ours["success_per_seed"], other["success_per_seed"], strict=False)
            seeds = sum(a > b for a, b in pairs)
            lines.append(
                f"- {mine} is {gap} in success ({ours['success_mean']:.2f} vs {other['success_mean']:.2f}; "
                f"{sure}; ahead in {seeds} of {len(ours['success_per_seed'])} seeds); steps to success "
                f"{_fmt(ours['steps_to_success_mean'], 1)} vs {_fmt(other['steps_to_success_mean'], 1)}."
            )
    return lines


def markdown(results: dict, figures: list[str], rerun: str | None) -> str:
    cfg = results["config"]
    last = max((r["iteration"] for r in results["summary"]), default=0)
    curve = flywheel_curve(results)
    lines = [
        "# flywheel demo: report",
        "",
        f"Tasks {', '.join(cfg['tasks'])}; {cfg['seeds']} seeds; {cfg['iterations']} RECAP iteration(s); "
        f"{cfg['eval_episodes']} held-out scenes per task and seed; horizon {cfg['horizon']}; "
        f"{cfg['rollouts_per_iteration']} rollouts per task and iteration; {cfg['method_steps']} "
        f"training steps per method (batch {cfg['batch_size']}) from a shared {cfg['sft_steps']}-step "
        f"SFT. Quick: {cfg['quick']}.",
        f"Wall time {results['wall_time_s']:.0f} s on {results['cpu_count']} CPUs "
        f"(load average at the end {', '.join(f'{x:.1f}' for x in results['load_average'])}).",
        "",
        "Success pools every seed's held-out episodes (seeds x scenes x tasks); its 95% interval is "
        "Wilson's over those episodes, and the per-seed rates show the spread between seeds. Steps "
        "count failures as the horizon (lower is better). The intervention rate is the share of "
        "frames the simulated operator drove in the rollouts of the deployed policy, its interval "
        "Student's t over those episodes.",
        "",
        "## The flywheel: the deployed policy, iteration by iteration",
        "",
        "Held-out success of the policy deployed after each iteration (0: the shared SFT; after: "
        "each seed's RECAP policy if it passed the gate), and in its rollouts with the simulated "
        "operator at the pedal, the share of frames the operator drove and how often it took over.",
        "",
        *curve_table(curve),
        "",
        *curve_verdicts(curve),
        "",
        *gate_lines(results),
        "",
        f"## Last iteration ({last}), all tasks",
        "",
        *results_table(rows_of(results, ALL_TASKS, last)),
        "",
        "### RECAP against the others",
        "",
        *verdicts(results),
        "",
        "## Every iteration and task",
        "",
    ]
    for task in [ALL_TASKS, *cfg["tasks"]]:
        lines += [f"### {task}", "", *results_table(rows_of(results, task)), ""]
    lines += ["## Labels (value function, advantages)", "", *label_lines(results), ""]
    lines += ["## Methods", ""] + [f"- `{m}`: {t}" for m, t in METHOD_TEXT.items()] + [""]
    lines += ["## Hot-swaps", "", *hotswap_lines(results), ""]
    lines += ["## Figures", ""] + [f"![{name}](figures/{name})" for name in figures] + [""]
    lines += ["## Time per stage (s, summed over processes)", ""]
    lines += [f"- {k}: {v:.0f}" for k, v in results["timings_s"].items()]
    lines += ["", f"Rerun recording: `{rerun}`" if rerun else "Rerun recording: not written.", ""]
    return "\n".join(lines)


def gate_lines(results: dict) -> list[str]:
    gates = results.get("gates") or []
    if not gates:
        return []
    passed = sum(g["passed"] for g in gates)
    refused = [f"seed {g['seed']} iteration {g['iteration']}" for g in gates if not g["passed"]]
    return [
        f"The gate passed {passed} of {len(gates)} candidates (each against the deployed policy on "
        f"{gates[0]['scenes']} scenes of its own)" + (f"; refused: {', '.join(refused)}." if refused else ".")
    ]


def label_lines(results: dict) -> list[str]:
    lines = [
        "| seed | iteration | estimator | AUC (good vs bad demo frames) | good frames positive "
        "| bad frames positive | value MAE | conditioning of the previous RECAP model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["labels"]:
        q = row.get("label_quality") or {}
        gap = (row.get("conditioning") or {}).get("relative_gap")
        lines.append(
            f"| {row['seed']} | {row['iteration']} | {row['estimator']} | {_fmt(q.get('auc'))} "
            f"| {_fmt(q.get('good_positive'))} | {_fmt(q.get('bad_positive'))} "
            f"| {_fmt(row.get('value_mae_vs_mc_return'), 3)} "
            f"| {'–' if gap is None else f'{100 * gap:+.1f}%'} |"
        )
    lines += [
        "",
        "Conditioning: the RECAP model of the iteration before, on this iteration's new rollouts "
        "(frames it never trained on) with this iteration's labels: its flow loss with each frame's "
        "indicator flipped minus with its own, as a share of the latter (0: it ignores the "
        "indicator; flywheel/policies/pi_star_recap/conditioning.py).",
    ]
    return lines


def hotswap_lines(results: dict) -> list[str]:
    swaps = results["hotswaps"]
    ok = sum(s.get("status") == "swapped" for s in swaps)
    return [
        f"{ok} of {len(swaps)} DEPLOY requests were validated and swapped in by the rollout daemon "
        "(inproc:// ZeroMQ, one per task and iteration, before the first tick of the rollouts)."
    ]


# --- figures -------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_flywheel(results: dict, path: Path) -> list[str]:
    """flywheel.png: the deployed policy's held-out success and its rollouts' intervention rate and
    takeovers per episode, iteration by iteration, with their 95% intervals."""
    curve = [r for r in flywheel_curve(results) if r["success_mean"] is not None]
    if not curve:
        return []
    plt = _pyplot()
    x = [r["iteration"] for r in curve]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (
        ("success", "held-out success (deployed policy)", "tab:blue"),
        ("intervention_rate", "intervention rate (share of frames)", "tab:orange"),
        ("takeovers_per_episode", "takeovers per episode", "tab:red"),
    )
    for ax, (key, title, color) in zip(axes, panels, strict=True):
        y = np.array([r[f"{key}_mean"] for r in curve], dtype=float)
        bounds = [r[f"{key}_ci95"] for r in curve]
        lo = np.array([b[0] if b[0] is not None else m for b, m in zip(bounds, y, strict=True)])
        hi = np.array([b[1] if b[1] is not None else m for b, m in zip(bounds, y, strict=True)])
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=4, color=color)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration (0: SFT on the initial data)")
        ax.set_xticks(x)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def plot_metrics(results: dict, folder: Path) -> list[str]:
    """flywheel.png (plot_flywheel), and success.png and throughput.png: per iteration and method,
    mean and 95% interval, per task."""
    plt = _pyplot()
    tasks = [ALL_TASKS, *results["config"]["tasks"]]
    names = plot_flywheel(results, folder / "flywheel.png")
    for metric, ylabel, name in (
        ("success", "success rate (held-out scenes)", "success.png"),
        ("mean_steps", "steps per episode (failures = horizon)", "throughput.png"),
    ):
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            _plot_task(ax, rows_of(results, task), metric)
            ax.set_title(task)
            ax.set_xlabel("iteration")
            ax.set_xticks(range(results["config"]["iterations"] + 1))
            ax.set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def _plot_task(ax, rows: list[dict], metric: str) -> None:
    methods = sorted({r["method"] for r in rows}, key=list(COLORS).index)
    for offset, method in enumerate(methods):
        if method == "sft":
            continue
        # RECAP's line starts at the shared SFT (iteration 0); a baseline trained once is a point.
        joined = (method, "sft") if method == "recap" else (method,)
        mine = sorted((r for r in rows if r["method"] in joined), key=lambda r: r["iteration"])
        x = np.array([r["iteration"] for r in mine], dtype=float) + 0.04 * (offset - len(methods) / 2)
        y = np.array([r[f"{metric}_mean"] for r in mine])
        lo = np.array(
            [
                r[f"{metric}_ci95"][0] if r[f"{metric}_ci95"][0] is not None else m
                for r, m in zip(mine, y, strict=True)
            ]
        )
        hi = np.array(
            [
                r[f"{metric}_ci95"][1] if r[f"{metric}_ci95"][1] is not None else m
                for r, m in zip(mine, y, strict=True)
            ]
        )
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, color=COLORS[method], label=method)
    ax.grid(alpha=0.3)


def plot_value_curves(arrays: dict, path: Path, per_kind: int = 2) -> list[str]:
    """V(o_t) of a few episodes (takeover runs and demos), operator spans shaded."""
    plt = _pyplot()
    episodes = _pick_episodes(arrays, per_kind)
    if not episodes:
        return []
    fig, axes = plt.subplots(len(episodes), 1, figsize=(8, 2.0 * len(episodes)), squeeze=False)
    for ax, (e, why) in zip(axes[:, 0], episodes, strict=True):
        rows = arrays["episode"] == e
        t = arrays["frame_index"][rows]
        ax.plot(t, arrays["values"][rows], color="tab:blue", label="V(o_t)")
        ax.plot(t, arrays["advantages"][rows], color="tab:gray", lw=0.8, label="advantage")
        for start, stop in _spans(arrays["intervention"][rows] & (arrays["frame_type"][rows] == 2)):
            ax.axvspan(t[start], t[stop - 1], color="tab:orange", alpha=0.25)
        positive = arrays["positive"][rows]
        ax.scatter(t[positive], arrays["values"][rows][positive], s=4, color="tab:green", label="positive")
        success = "success" if arrays["episode_success"][e] else "failure"
        ax.set_title(f"episode {e}: {arrays['episode_task'][e]}, {why}, {success}", fontsize=8)
        ax.set_ylim(-1.05, 0.35)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("frame (orange: the operator's takeover)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _pick_episodes(arrays: dict, per_kind: int) -> list[tuple[int, str]]:
    types, quality = arrays["episode_data_type"], arrays["quality"]
    first_quality = {int(e): q for e, q in zip(arrays["episode"], quality, strict=True)}
    picked = [
        (int(e), "policy run with takeovers") for e in np.flatnonzero(types == "intervention")[-per_kind:]
    ]
    for kind in ("good", "bad"):
        demos = [e for e in np.flatnonzero(types == "demo") if first_quality.get(int(e)) == kind]
        picked += [(int(e), f"{kind} operator demo") for e in demos[:1]]
    return picked


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def plot_advantage_histograms(arrays: dict, path: Path) -> list[str]:
    """Advantages by data type (demo / auto / intervention) and by the demo operator's quality."""
    plt = _pyplot()
    adv = arrays["advantages"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(np.percentile(adv, 0.5), np.percentile(adv, 99.5), 40)
    for type_id, name in enumerate(("demo", "auto", "intervention")):
        chosen = arrays["frame_type"] == type_id
        if chosen.any():
            left.hist(adv[chosen], bins=bins, alpha=0.5, density=True, label=f"{name} ({chosen.sum()})")
    left.set_title("advantage by data type")
    for name, color in (("good", "tab:green"), ("bad", "tab:red")):
        chosen = arrays["quality"] == name
        if chosen.any():
            right.hist(
                adv[chosen],
                bins=bins,
                alpha=0.5,
                density=True,
                color=color,
                label=f"{name} operator demos ({chosen.sum()})",
            )
    right.set_title("advantage by operator quality (demo frames)")
    for ax in (left, right):
        ax.set_xlabel("advantage")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


# --- Rerun ---------------------------------------------------------------------------------------
def write_rerun(results: dict, out: Path, episodes: int = 6) -> str | None:
    """demo.rrd: the last iteration's labeled dataset of seed 0 (its newest episodes) replayed with
    values, advantages and takeover spans, through flywheel.viz."""
    cfg = results["config"]
    labeled = out / "seed0" / f"iter{cfg['iterations']}" / "labeled"
    if not cfg.get("rerun") or not labeled.exists():
        return None
    try:
        import rerun as rr

        from flywheel.viz.replay import read_episodes, read_layout, replay_dataset
    except ImportError as e:  # flywheel.viz is a colleague's package: the demo works without it
        log.warning("no Rerun recording: %s", e)
        return None
    stream = rr.RecordingStream("flywheel-demo")
    path = out / "demo.rrd"
    stream.save(str(path))
    total = len(read_episodes(labeled))
    replay_dataset(stream, read_layout(labeled), episodes=list(range(max(0, total - episodes), total)))
    stream.flush()
    return str(path)


def load_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# --- self-check ----------------------------------------------------------------------------------
def check_results(results: dict, out: Path) -> list[str]:
    """Internal consistency of a finished run: what is wrong, or [] (the test of --quick uses it)."""
    problems = [
        f"evaluation {i}: {p}" for i, row in enumerate(results["evaluations"]) for p in _check_eval(row)
    ]
    if results["summary"] != summarize(results["evaluations"], results["rollouts"]):
        problems.append("summary: differs from the summary recomputed from the evaluations")
    seeds = list(range(results["config"]["seeds"]))
    for row in results["summary"]:
        expected = seeds
        if row["seeds"] != expected:
            problems.append(
                f"summary {row['method']}/{row['task']}: seeds {row['seeds']}, expected {expected}"
            )
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
        if f"| {row['iteration']} | {row['method']} | {row['success_mean']:.2f} |" not in report:
            problems.append(f"report.md: no row for {row['method']} at iteration {row['iteration']}")
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
