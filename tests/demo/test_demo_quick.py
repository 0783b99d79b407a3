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
from flywheel.demo.report import check_results, flywheel_curve, interval, summarize
from flywheel.demo.run import prepare_out_dir, run_demo
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
    cfg = _tiny(tmp_path / "demo")
    results = run_demo(cfg, prepare_out_dir(cfg))
    out = cfg.out_dir
    assert check_results(results, out) == []
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == results["summary"]
    methods = {r["method"] for r in on_disk["summary"]}
    assert methods == {"sft", "sft_all", "filtered_sft", "awr", "recap", "recap_cfg", "recap_gt", "good_only"}
    # recap_gt trains on the same frames with the sim's truth as its indicator, in a labeled copy.
    gt_root = out / "seed0" / "iter1" / "labeled_gt"
    positive = labels_of(gt_root)
    assert np.array_equal(positive, ground_truth_positive(load_source(gt_root)))
    assert 0 < positive.mean() < 1
    # Every rollout batch got its version over ZeroMQ and the daemon swapped it in.
    assert on_disk["hotswaps"] and all(s["status"] == "swapped" for s in on_disk["hotswaps"])
    report = (out / "report.md").read_text()
    for name in on_disk["figures"]:
        assert f"figures/{name}" in report and (out / "figures" / name).stat().st_size > 1000
    assert {"success.png", "throughput.png", "value_curves.png", "advantage_histograms.png"} <= set(
        on_disk["figures"]
    )


@pytest.mark.timeout(600)
def test_seeds_in_worker_processes_give_the_results_of_one_process(tmp_path):
    """`workers` only changes where a seed runs, never what it measures."""

    def measured(workers: int) -> dict:
        cfg = replace(_tiny(tmp_path / f"demo{workers}"), workers=workers, methods=["recap"])
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


def test_summary_averages_tasks_within_a_seed_then_seeds():
    def row(seed, task, success, steps):
        return {
            "seed": seed,
            "iteration": 1,
            "method": "recap",
            "task": task,
            "success_rate": success,
            "mean_steps": steps,
            "mean_steps_to_success": 50.0 if success else None,
            "horizon": 100,
            "episodes": 4,
        }

    evaluations = [
        row(0, "a", 1.0, 50.0),
        row(0, "b", 0.0, 100.0),
        row(1, "a", 0.5, 75.0),
        row(1, "b", 0.5, 75.0),
    ]
    rollouts = [
        {"seed": 0, "iteration": 1, "method": "recap", "task": "a", "frames": 100, "intervention_frames": 10},
        {"seed": 0, "iteration": 1, "method": "recap", "task": "b", "frames": 300, "intervention_frames": 30},
    ]
    summary = {r["task"]: r for r in summarize(evaluations, rollouts)}
    assert summary["all"]["success_per_seed"] == [0.5, 0.5]
    assert summary["all"]["mean_steps_mean"] == pytest.approx(75.0)
    assert summary["a"]["success_mean"] == pytest.approx(0.75)
    assert summary["all"]["intervention_rate_mean"] == pytest.approx(0.1)


def test_flywheel_curve_follows_the_deployed_policy_over_iterations():
    def rollout(seed, iteration, interventions, takeovers):
        method = "sft" if iteration == 0 else "recap"
        return {"seed": seed, "iteration": iteration, "task": "push-v3", "method": method, "episodes": 4,
                "frames": 400, "intervention_frames": interventions, "takeovers": takeovers}  # fmt: skip

    def evaluation(seed, iteration, method, success):
        steps = 50.0 if success else None
        return {"seed": seed, "iteration": iteration, "method": method, "task": "push-v3",
                "success_rate": success, "mean_steps": 100.0 if success else 150.0,
                "mean_steps_to_success": steps, "horizon": 150, "episodes": 4}  # fmt: skip

    rollouts = [rollout(s, i, 200 - 80 * i + 10 * s, 8 - 3 * i) for s in (0, 1) for i in (0, 1, 2)]
    evaluations = [evaluation(None, 0, "sft", 0.25)]
    evaluations += [evaluation(s, i, "recap", 0.25 + 0.25 * i) for s in (0, 1) for i in (1, 2)]
    results = {"rollouts": rollouts, "summary": summarize(evaluations, rollouts)}
    curve = flywheel_curve(results)
    assert [(r["iteration"], r["policy"]) for r in curve] == [(0, "sft"), (1, "recap"), (2, "recap")]
    assert [r["success_mean"] for r in curve] == pytest.approx([0.25, 0.5, 0.75])
    assert [r["intervention_rate_mean"] for r in curve] == pytest.approx([205 / 400, 125 / 400, 45 / 400])
    assert [r["takeovers_per_episode_mean"] for r in curve] == pytest.approx([2.0, 1.25, 0.5])
    low, high = curve[0]["intervention_rate_ci95"]
    assert low < 205 / 400 < high  # two seeds differ by 10 frames: a real interval
