"""Small synthetic flywheel datasets whose truth is known, for the RECAP tests.

State (4,): [progress x, last step dx, task flag, noise]. Episode kinds:
    fast:   x rises 0.05 per step, succeeds after 20 steps           (truly good)
    slow:   x rises 0.0125 per step, succeeds after 80 steps         (truly bad)
    failed: x wanders near 0, times out after 80 steps               (truly bad)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import FLYWHEEL_FRAME_FEATURES, DataType, EpisodeInfo, save_episode

FEATURES = {
    "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "dx", "task", "noise"]},
    "action": {"dtype": "float32", "shape": (2,), "names": ["a0", "a1"]},
    **FLYWHEEL_FRAME_FEATURES,
}
TASKS = ("reach the goal", "push the block")
CAMERA = "observation.images.front"
CAMERA_FEATURE = {"dtype": "image", "shape": (16, 16, 3), "names": ["height", "width", "channels"]}


@dataclass
class Spec:
    kind: str  # fast | slow | failed
    task: str = TASKS[0]
    data_type: DataType = DataType.DEMO
    operator: str = "sim_operator:good"
    intervention: tuple[int, int] | None = None  # frames [a, b) driven by the operator


LENGTH = {"fast": 20, "slow": 80, "failed": 80}


def trajectory(kind: str, task: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = LENGTH[kind]
    if kind == "failed":
        dx = rng.normal(0.0, 0.01, n)
    else:
        dx = np.full(n, 0.05 if kind == "fast" else 0.0125) + rng.normal(0.0, 0.002, n)
    x = np.cumsum(dx) - dx
    state = np.stack([x, dx, np.full(n, float(TASKS.index(task))), rng.normal(0, 1, n)], 1)
    action = np.stack([dx * 10, rng.normal(0, 0.1, n)], 1)
    return state.astype(np.float32), action.astype(np.float32)


def make_dataset(root: Path, specs: list[Spec], seed: int = 0, camera: bool = False) -> Path:
    """With `camera`, a 16x16 image whose brightness is the progress x."""
    rng = np.random.default_rng(seed)
    features = {**FEATURES, CAMERA: CAMERA_FEATURE} if camera else FEATURES
    dataset = LeRobotDataset.create("local/synth", 30, features, root=root, use_videos=False)
    for spec in specs:
        state, action = trajectory(spec.kind, spec.task, rng)
        n = len(state)
        intervention = np.full(n, spec.data_type == DataType.DEMO)
        if spec.intervention:
            intervention[spec.intervention[0] : spec.intervention[1]] = True
        success = spec.kind != "failed"
        for t in range(n):
            image = {CAMERA: np.full((16, 16, 3), np.clip(state[t, 0], 0, 1) * 255, np.uint8)}
            dataset.add_frame(
                {
                    **(image if camera else {}),
                    "observation.state": state[t],
                    "action": action[t],
                    "intervention": np.array([intervention[t]]),
                    "policy_version": np.array([0 if intervention[t] else 1], dtype=np.int64),
                    "next.reward": np.array([1.0 if (success and t == n - 1) else 0.0], dtype=np.float32),
                    "next.done": np.array([t == n - 1]),
                    "task": spec.task,
                }
            )
        info = EpisodeInfo(
            data_type=spec.data_type,
            success=success,
            num_intervention_frames=int(intervention.sum()),
            operator=spec.operator,
            robot="synth",
            end_reason="success" if success else "timeout",
        )
        save_episode(dataset, info)
    return root


def mixed_specs(repeats: int = 3) -> list[Spec]:
    """Both tasks; good demos, bad demos, autonomous failures, and interventions."""
    specs = []
    for task in TASKS:
        for _ in range(repeats):
            specs += [
                Spec("fast", task),
                Spec("slow", task, operator="sim_operator:slow"),
                Spec("failed", task, operator="sim_operator:drift"),
                Spec("failed", task, DataType.AUTO, operator="sim_operator:good"),
                Spec("slow", task, DataType.INTERVENTION, intervention=(30, 60)),
            ]
    return specs
