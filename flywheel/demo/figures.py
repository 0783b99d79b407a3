"""The demo's figures (matplotlib, Agg): the flywheel curve, success and steps per method and task,
and the last labels' value curves and advantage histograms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from flywheel.contracts.dataset import FrameType
from flywheel.demo.stats import ALL_TASKS, METHOD_ORDER, Bounds, CurveRow, SummaryRow, flywheel_curve, rows_of

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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_flywheel(results: dict, path: Path) -> list[str]:
    """flywheel.png: the deployed policy's held-out success and its rollouts' intervention rate and
    takeovers per episode, iteration by iteration, with their 95% intervals."""
    curve = [r for r in flywheel_curve(results) if r.success_mean is not None]
    if not curve:
        return []
    plt = _pyplot()
    x = [r.iteration for r in curve]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels: tuple[tuple[Callable[[CurveRow], tuple[float, Bounds]], str, str], ...] = (
        (lambda r: (r.success_mean, r.success_ci95), "held-out success (deployed policy)", "tab:blue"),
        (
            lambda r: (r.intervention_rate_mean, r.intervention_rate_ci95),
            "intervention rate (share of frames)",
            "tab:orange",
        ),
        (
            lambda r: (r.takeovers_per_episode_mean, r.takeovers_per_episode_ci95),
            "takeovers per episode",
            "tab:red",
        ),
    )
    for ax, (estimate, title, color) in zip(axes, panels, strict=True):
        _errorbar(ax, x, [estimate(r) for r in curve], marker="o", capsize=4, color=color)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration (0: SFT on the initial data)")
        ax.set_xticks(x)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _errorbar(ax, x, estimates: list[tuple[float, Bounds]], **style) -> None:
    """Means with their 95% intervals as error bars (an unknown bound: no bar on that side)."""
    y = np.array([mean for mean, _ in estimates], dtype=float)
    lo = np.array([b[0] if b[0] is not None else m for (_, b), m in zip(estimates, y, strict=True)])
    hi = np.array([b[1] if b[1] is not None else m for (_, b), m in zip(estimates, y, strict=True)])
    ax.errorbar(x, y, yerr=[y - lo, hi - y], **style)


# results.json's two metrics per summary row, as (mean, 95% interval)
SUCCESS: Callable[[SummaryRow], tuple[float, Bounds]] = lambda r: (r.success_mean, r.success_ci95)  # noqa: E731
MEAN_STEPS: Callable[[SummaryRow], tuple[float, Bounds]] = lambda r: (r.mean_steps_mean, r.mean_steps_ci95)  # noqa: E731


def plot_metrics(results: dict, folder: Path) -> list[str]:
    """flywheel.png (plot_flywheel), and success.png and throughput.png: per iteration and method,
    mean and 95% interval, per task."""
    plt = _pyplot()
    tasks = [ALL_TASKS, *results["config"]["tasks"]]
    names = plot_flywheel(results, folder / "flywheel.png")
    for metric, ylabel, name in (
        (SUCCESS, "success rate (held-out scenes)", "success.png"),
        (MEAN_STEPS, "steps per episode (failures = horizon)", "throughput.png"),
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


def _plot_task(ax, rows: list[SummaryRow], metric: Callable[[SummaryRow], tuple[float, Bounds]]) -> None:
    methods = sorted({r.method for r in rows}, key=METHOD_ORDER.index)
    for offset, method in enumerate(methods):
        if method == "sft":
            continue
        # RECAP's line starts at the shared SFT (iteration 0); a baseline trained once is a point.
        joined = (method, "sft") if method == "recap" else (method,)
        mine = sorted((r for r in rows if r.method in joined), key=lambda r: r.iteration)
        x = np.array([r.iteration for r in mine], dtype=float) + 0.04 * (offset - len(methods) / 2)
        _errorbar(ax, x, [metric(r) for r in mine], marker="o", capsize=3, color=COLORS[method], label=method)
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
        operated = arrays["intervention"][rows] & (arrays["frame_type"][rows] == FrameType.INTERVENTION)
        for start, stop in _spans(operated):
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
    for frame_type in FrameType:
        name = str(frame_type.data_type)
        chosen = arrays["frame_type"] == frame_type
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
