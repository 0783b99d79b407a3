"""report.md's text: the tables, the verdicts in plain sentences, and the page around them."""

from __future__ import annotations

from flywheel.demo.stats import ALL_TASKS, Bounds, CurveRow, SummaryRow, apart, flywheel_curve, rows_of

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


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(pair: Bounds) -> str:
    return "–" if pair[0] is None else f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def _overlap(a: Bounds, b: Bounds) -> str:
    return "do not overlap" if apart(a, b) else "overlap: not a reliable difference"


def curve_verdicts(curve: list[CurveRow]) -> list[str]:
    """The flywheel's two claims, first against last iteration, in plain sentences."""
    if len(curve) < 2 or curve[0].success_mean is None or curve[-1].success_mean is None:
        return ["Fewer than two evaluated iterations: no trend to state."]
    first, last = curve[0], curve[-1]
    rise = (last.success_mean - first.success_mean) * 100
    lines = [
        f"- Success from iteration 0 to {last.iteration}: {first.success_mean:.2f} -> "
        f"{last.success_mean:.2f} ({rise:+.0f} points; the 95% intervals "
        f"{_overlap(first.success_ci95, last.success_ci95)})."
    ]
    if first.intervention_rate_mean:
        ratio = last.intervention_rate_mean / first.intervention_rate_mean
        lines.append(
            f"- Intervention rate: {first.intervention_rate_mean:.2f} -> "
            f"{last.intervention_rate_mean:.2f} ({ratio:.2f} of the first; the 95% intervals "
            f"{_overlap(first.intervention_rate_ci95, last.intervention_rate_ci95)})."
        )
    return lines


def curve_table(curve: list[CurveRow]) -> list[str]:
    lines = [
        "| iteration | deployed (versions per seed) | success (held-out) | 95% interval "
        "| steps to success | intervention rate | 95% interval | takeovers per episode "
        "| 95% interval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in curve:
        deployed = f"{'/'.join(r.policies)} (v{', v'.join(str(v) for v in r.versions)})"
        lines.append(
            f"| {r.iteration} | {deployed} | {_fmt(r.success_mean)} | {_ci(r.success_ci95)} "
            f"| {_fmt(r.steps_to_success_mean, 1)} | {_fmt(r.intervention_rate_mean)} "
            f"| {_ci(r.intervention_rate_ci95)} | {_fmt(r.takeovers_per_episode_mean)} "
            f"| {_ci(r.takeovers_per_episode_ci95)} |"
        )
    return lines


def results_table(rows: list[SummaryRow]) -> list[str]:
    lines = [
        "| iteration | method | success | 95% interval | episodes | per seed | steps to success "
        "| steps (failures = horizon) | intervention rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = " ".join(f"{s:.2f}" for s in r.success_per_seed)
        lines.append(
            f"| {r.iteration} | {r.method} | {r.success_mean:.2f} | {_ci(r.success_ci95)} "
            f"| {r.episodes} | {per_seed} | {_fmt(r.steps_to_success_mean, 1)} "
            f"| {r.mean_steps_mean:.1f} {_ci(r.mean_steps_ci95)} "
            f"| {_fmt(r.intervention_rate_mean)} |"
        )
    return lines


def table_row_start(row: SummaryRow) -> str:
    """How results_table's row of `row` begins (check_results looks for it in report.md)."""
    return f"| {row.iteration} | {row.method} | {row.success_mean:.2f} |"


def verdicts(results: dict) -> list[str]:
    """RECAP (and RECAP+CFG) against every other method on the last iteration, all tasks, in plain
    sentences: a difference is called real only when the 95% intervals do not overlap."""
    last = max((r["iteration"] for r in results["summary"]), default=0)
    rows = {r.method: r for r in rows_of(results, ALL_TASKS, last)}
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
            diff = ours.success_mean - other.success_mean
            gap = (
                f"level with {method}"
                if abs(diff) < 0.005
                else f"{abs(diff) * 100:.0f} points {'above' if diff > 0 else 'below'} {method}"
            )
            sure = f"the intervals {_overlap(ours.success_ci95, other.success_ci95)}"
            pairs = zip(ours.success_per_seed, other.success_per_seed, strict=False)
            seeds = sum(a > b for a, b in pairs)
            lines.append(
                f"- {mine} is {gap} in success ({ours.success_mean:.2f} vs {other.success_mean:.2f}; "
                f"{sure}; ahead in {seeds} of {len(ours.success_per_seed)} seeds); steps to success "
                f"{_fmt(ours.steps_to_success_mean, 1)} vs {_fmt(other.steps_to_success_mean, 1)}."
            )
    return lines


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


def markdown(results: dict, figures: list[str], rerun: str | None) -> str:
    """report.md."""
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
