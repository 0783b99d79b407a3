"""Compare labeling settings on a dataset whose truth is known (sim operators' skills).

    python -m benchmarks.label_quality_sweep DATASET [--folds 1 3] [--seeds 0 1] [--steps 800] [--iql]

Trains V once per (folds, seed) and evaluates every advantage mode x threshold mode x fraction on
it: share of good-operator frames positive / share of bad-operator frames positive, and the AUC.
Nothing is written. The numbers in docs/recap.md come from this.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flywheel.recap import advantages as adv
from flywheel.recap import iql
from flywheel.recap.labeling import RewardConfig, episode_slices, forced_positive, rewards_and_returns
from flywheel.recap.quality import frame_truth, label_quality
from flywheel.recap.source import Source, load_source
from flywheel.recap.train_value import FitSettings, cross_fit_values

GRID = (("global", 0.3), ("global", 0.1), ("progress", 0.1), ("progress", 0.15), ("progress", 0.2))


def evaluate(source: Source, name: str, values: np.ndarray, advantages: np.ndarray) -> None:
    truth = frame_truth(source.episodes.operator, source.episodes.data_type, source.frames.episode)
    forced = forced_positive(source, demos_positive=False)
    cells = []
    for mode, fraction in GRID:
        positive, _ = adv.label(advantages, values, source.task_of_frames(), forced, mode, fraction)
        quality = label_quality(truth, advantages, positive, forced)
        if quality is None:
            raise SystemExit("no good-operator and bad-operator demo frames to compare")
        cells.append(f"{mode} {fraction:.0%}: {quality.good_positive:.3f}/{quality.bad_positive:.3f}")
    print(f"{name:28s} AUC {quality.auc:.3f}  " + "  ".join(cells), flush=True)


def sweep(root: str, folds_list: list[int], seeds: list[int], steps: int, with_iql: bool) -> None:
    source = load_source(root)
    rewards, returns, frame_t_max = rewards_and_returns(source, RewardConfig())
    slices = episode_slices(source)
    t_max = np.array([frame_t_max[s.start] for s in slices])
    for seed in seeds:
        for folds in folds_list:
            start = time.perf_counter()
            values, _ = cross_fit_values(source, returns, folds, FitSettings(steps=steps, seed=seed))
            took = time.perf_counter() - start
            nstep = adv.nstep_advantages(rewards, values, slices, 50, t_max)
            evaluate(source, f"recap nstep k={folds} s={seed} ({took:.0f}s)", values, nstep)
            evaluate(source, f"recap mc    k={folds} s={seed}", values, adv.mc_advantages(returns, values))
        if with_iql:
            data = iql.make_transitions(source.frames.state, source.frames.action, rewards, slices)
            model, _ = iql.train_iql(data, iql.IQLSettings(seed=seed))
            evaluate(source, f"iql s={seed}", *iql.iql_advantages(model, data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--iql", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sweep(args.dataset, args.folds, args.seeds, args.steps, args.iql)


if __name__ == "__main__":
    main()
