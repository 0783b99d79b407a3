"""`flywheel demo`: the pipeline end to end, and its results checked for internal consistency.

Not checked: that RECAP wins. The numbers are whatever the run measured.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flywheel.demo import DemoConfig, demo_main
from flywheel.demo.baselines import ground_truth_positive
from flywheel.demo.markdown import curve_verdicts
from flywheel.demo.report import check_results
from flywheel.demo.run import prepare_out_dir, run_demo
from flywheel.demo.stats import flywheel_curve, interval, summarize, wilson
from flywheel.recap.indicator_balance import labels_of
from flywheel.recap.source import load_source


def _tiny(out: Path) -> DemoConfig:
    """Smaller than --quick: every stage runs, on almost nothing (about 1-2 minutes)."""
    quick = DemoConfig(out_dir=out, quick=True).resolved()
    return replace(
        quick,
        quick=False,
        seeds=2,
        good_demos=2,
        bad_demos=2,
        takeover_episodes=1,
        rollouts_per_iteration=1,
        horizon=60,
        sft_steps=10,
        method_steps=4,
        value_steps=20,
        iql_steps=20,
        eval_episodes=2,
    )


@pytest.mark.timeout(600)  # about 1-2 minutes; more on a busy 2-core machine
def test_every_stage_runs_and_the_results_agree_with_themselves(tmp_path):
    cfg = replace(_tiny(tmp_path / "demo"), iterations=2)
    results = run_demo(cfg, prepare_out_dir(cfg))
    out = cfg.out_dir
    assert check_results(results, out) == []
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == results["summary"]
    methods = {r["method"] for r in on_disk["summary"]}
    assert methods == {"sft", "sft_all", "filtered_sft", "awr", "recap", "recap_cfg", "recap_gt", "good_only"}
    # recap_gt trains on the same frames with the sim's truth as its indicator, in a labeled copy.
    gt_root = out / "seed0" / "iter2" / "labeled_gt"
    positive = labels_of(gt_root)
    assert np.array_equal(positive, ground_truth_positive(load_source(gt_root)))
    assert 0 < positive.mean() < 1
    # Every rollout batch got its version over ZeroMQ and the daemon swapped it in.
    assert on_disk["hotswaps"] and all(s["status"] == "swapped" for s in on_disk["hotswaps"])
    # every seed's candidate went through the gate, and the curve follows what it decided
    assert [(g["seed"], g["iteration"]) for g in on_disk["gates"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    # from iteration 2 on, the previous RECAP model's conditioning on the new rollouts is measured
    measured = {(r["seed"], r["iteration"]): r.get("conditioning") for r in on_disk["labels"]}
    for seed in (0, 1):
        assert measured[(seed, 1)] is None
        assert np.isfinite(measured[(seed, 2)]["relative_gap"]) and measured[(seed, 2)]["frames"] > 0
    curve = flywheel_curve(on_disk)
    for gate in on_disk["gates"]:  # iteration k's decision is what its rollouts ran
        kept = gate["candidate"] if gate["passed"] else gate["current"]
        assert curve[gate["iteration"]].versions[gate["seed"]] == kept
    report = (out / "report.md").read_text()
    for name in on_disk["figures"]:
        assert f"figures/{name}" in report and (out / "figures" / name).stat().st_size > 1000
    assert {
        "flywheel.png",
        "success.png",
        "throughput.png",
        "value_curves.png",
        "advantage_histograms.png",
    } <= set(on_disk["figures"])


@pytest.mark.timeout(600)
def test_seeds_in_worker_processes_give_the_results_of_one_process(tmp_path):
    """`workers` only changes where a job runs, never what it measures."""

    def measured(workers: int) -> dict:
        methods = ["recap", "filtered_sft"]  # a chain and a baseline job per seed
        cfg = replace(_tiny(tmp_path / f"demo{workers}"), workers=workers, methods=methods)
        results = run_demo(cfg, prepare_out_dir(cfg))
        return {key: _without_times(results[key]) for key in ("evaluations", "rollouts", "labels", "data")}

    assert measured(1) == measured(2)


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "time" not in k} for row in rows]


@pytest.mark.timeout(900)
def test_quick_demo_writes_a_consistent_report(tmp_path):
    """What `flywheel demo --quick` runs (about 5 minutes on 2 cores)."""
    out = tmp_path / "demo"
    assert demo_main(DemoConfig(out_dir=out, quick=True)) == 0
    results = json.loads((out / "results.json").read_text())
    assert check_results(results, out) == []
    assert results["config"]["quick"] is True and len(results["config"]["tasks"]) == 1


def test_refuses_a_non_empty_output_folder_without_overwrite(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    assert demo_main(DemoConfig(out_dir=tmp_path)) == 2
    assert (tmp_path / "old.txt").exists()


def test_overwrite_never_removes_a_folder_the_demo_did_not_make(tmp_path):
    """`--overwrite=true` on the user's own folder (say the repository, or a dataset) deletes nothing."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "episode.parquet").write_text("precious")
    assert demo_main(DemoConfig(out_dir=tmp_path, overwrite=True)) == 2
    assert (tmp_path / "dataset" / "episode.parquet").read_text() == "precious"
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path, target_is_directory=True)
    assert demo_main(DemoConfig(out_dir=link, overwrite=True)) == 2
    assert (tmp_path / "dataset" / "episode.parquet").exists()


def test_overwrite_replaces_an_earlier_demo_run(tmp_path):
    out = tmp_path / "demo"
    prepare_out_dir(DemoConfig(out_dir=out))
    (out / "results.json").write_text("{}")  # what an earlier run left
    with pytest.raises(FileExistsError, match="earlier demo run"):
        prepare_out_dir(DemoConfig(out_dir=out))
    assert prepare_out_dir(DemoConfig(out_dir=out, overwrite=True)) == out
    assert not (out / "results.json").exists()


def test_refuses_unknown_methods():
    with pytest.raises(ValueError, match="methods"):
        DemoConfig(methods=["recap", "ppo"]).resolved()
    with pytest.raises(ValueError, match="recap_cfg"):
        DemoConfig(methods=["recap_cfg"]).resolved()


def test_interval_is_students_t_over_seeds():
    mean, lo, hi = interval([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4)
    assert (lo, hi) == pytest.approx((0.4 - 0.4968, 0.4 + 0.4968), abs=1e-3)  # t(0.975, 2) = 4.303
    assert interval([0.5]) == (0.5, None, None)


def test_wilson_interval():
    assert wilson(30, 60) == pytest.approx((0.3773, 0.6227), abs=1e-4)
    low, high = wilson(0, 50)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.0713, abs=1e-4)


def _evaluation(seed, iteration, method, task, successes, version=None, horizon=100):
    steps = [50 if s else horizon for s in successes]
    return {"seed": seed, "iteration": iteration, "method": method, "task": task, "version": version,
            "success_rate": float(np.mean(successes)), "scene_successes": successes,
            "scene_steps": steps, "horizon": horizon, "episodes": len(successes)}  # fmt: skip


def test_summary_pools_the_episodes_of_every_seed_and_task():
    evaluations = [
        _evaluation(0, 1, "recap", "a", [True, True, True, True]),
        _evaluation(0, 1, "recap", "b", [False, False, False, False]),
        _evaluation(1, 1, "recap", "a", [True, False, True, False]),
        _evaluation(1, 1, "recap", "b", [True, True, False, False]),
    ]
    rollouts = [
        {"seed": 0, "iteration": 1, "method": "recap", "task": "a", "episode_intervention_rates": [0.1, 0.3]},
        {"seed": 0, "iteration": 1, "method": "recap", "task": "b", "episode_intervention_rates": [0.2]},
    ]
    summary = {r["task"]: r for r in summarize(evaluations, rollouts)}
    every = summary["all"]
    assert every["episodes"] == 16 and every["success_mean"] == pytest.approx(8 / 16)
    assert every["success_ci95"] == pytest.approx(list(wilson(8, 16)))
    assert every["success_per_seed"] == [0.5, 0.5]
    assert every["mean_steps_mean"] == pytest.approx(75.0)
    assert every["steps_to_success_mean"] == pytest.approx(50.0)
    assert summary["a"]["success_mean"] == pytest.approx(0.75) and summary["a"]["episodes"] == 8
    assert every["intervention_rate_mean"] == pytest.approx(0.2)
    assert summary["b"]["intervention_rate_mean"] == pytest.approx(0.2)


def test_flywheel_curve_follows_the_deployed_version_over_iterations():
    """Iteration k's row is the version each seed deployed after k: a candidate the gate refused
    (seed 1 at iteration 2) leaves the earlier version in place, and its numbers with it."""
    deployed = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 0): 1, (1, 1): 2, (1, 2): 2}

    def rollout(seed, iteration):
        rate = 0.5 - 0.2 * iteration + 0.05 * seed
        method = "sft" if iteration == 0 else "recap"
        return {"seed": seed, "iteration": iteration, "task": "push-v3", "method": method,
                "version": deployed[(seed, iteration)], "episode_intervention_rates": [rate, rate + 0.1],
                "episode_takeovers": [3 - iteration, 2]}  # fmt: skip

    success = {1: [True, False, False, False], 2: [True, True, False, False], 3: [True, True, True, True]}
    evaluations = [_evaluation(s, 0, "sft", "push-v3", success[1], version=1) for s in (0, 1)]
    evaluations += [
        _evaluation(s, v - 1, "recap", "push-v3", success[v], version=v) for s in (0, 1) for v in (2, 3)
    ]
    curve = flywheel_curve(
        {"rollouts": [rollout(s, i) for s in (0, 1) for i in (0, 1, 2)], "evaluations": evaluations}
    )
    assert [r.versions for r in curve] == [[1, 1], [2, 2], [3, 2]]
    assert [r.success_mean for r in curve] == pytest.approx([0.25, 0.5, 0.75])
    assert curve[2].success_episodes == 8
    assert [r.intervention_rate_mean for r in curve] == pytest.approx([0.575, 0.375, 0.175])
    assert [r.takeovers_per_episode_mean for r in curve] == pytest.approx([2.5, 2.0, 1.5])
    low, high = curve[0].intervention_rate_ci95
    assert low < 0.575 < high
    lines = curve_verdicts(curve)
    assert "+50 points" in lines[0] and "0.30 of the first" in lines[1]
