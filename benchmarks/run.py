"""`flywheel bench [--quick] [--cases=[a,b]]`: run the cases, write JSON, print a markdown table."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.cases import CASES, run_case

# Targets from the issue; each is checked against a figure here, never in a test.
TARGETS = {
    "control_loop.lateness_alone_p99_ms": ("<=", 5.0),
    "hot_swap.swap_stall_over_period": ("<", 1.0),
    "select_action.cfg_over_unguided_p50": ("<=", 1.3),
    "labeling.batched_over_one_at_a_time": (">=", 10.0),
    "labeling.label_wall_s": ("<", 60.0),
    "soak.frames_lost": ("<=", 0),
}


ONLY_WHEN_NAMED = ("soak", "rtc_smoothness", "remote_policy", "handover")


@dataclass
class BenchConfig:
    # Smaller runs of every case (under 3 minutes in all on 2 cores).
    quick: bool = False
    # Which cases (default: all): control_loop, hot_swap, select_action, training, recording,
    # lerobot_record_loop, labeling, evaluation, sim_step, fleet. Only when named: soak (about 20
    # minutes; 1 with --quick), rtc_smoothness (trains a smooth tiny policy first: 4-20 minutes),
    # remote_policy (a policy server, across network namespaces too: 2-4 minutes) and handover (the
    # pedal on emulated SO-100 buses: 1-2 minutes).
    cases: list[str] = field(default_factory=lambda: [c for c in CASES if c not in ONLY_WHEN_NAMED])
    # Length of the soak case, when it is named.
    soak_minutes: float = 20.0
    # Where the JSON goes.
    output: Path = Path("outputs/bench")

    def __post_init__(self):
        unknown = [c for c in self.cases if c not in CASES]
        if unknown:
            raise ValueError(f"cases: unknown {unknown}; choose from {list(CASES)}")


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


def bench_main(cfg: BenchConfig) -> int:
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": cfg.quick,
        "machine": machine(),
        "cases": {},
    }
    for name in tqdm(cfg.cases, desc="bench"):
        results["cases"][name] = run_case(name, cfg.quick, cfg.soak_minutes)
    results["targets"] = check_targets(results["cases"])
    cfg.output.mkdir(parents=True, exist_ok=True)
    path = cfg.output / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if cfg.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1, default=lambda x: x.item()))  # numpy scalars
    print(markdown(results))
    print(f"\nwritten: {path}")
    return 0


def check_targets(cases: dict) -> dict:
    out = {}
    for key, (op, bound) in TARGETS.items():
        case, figure = key.split(".")
        value = cases.get(case, {}).get(figure)
        if value is not None:
            met = bool({"<=": value <= bound, "<": value < bound, ">=": value >= bound}[op])
            out[key] = {"value": value, "target": f"{op} {bound}", "met": met}
    return out


def markdown(results: dict) -> str:
    lines = ["| case | figure | value |", "|---|---|---|"]
    for case, figures in results["cases"].items():
        for name, value in figures.items():
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {case} | {name} | {shown} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for key, t in results["targets"].items():
        lines.append(f"| {key} {t['target']} | {t['value']:.3f} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)
