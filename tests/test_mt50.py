"""Every MetaWorld MT50 task on the sim arm: listed, documented, and solved by its scripted expert."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP

from robots.sim import SimArm, SimArmConfig
from robots.sim.tasks import ACTION_NAMES, PROGRESS_KINDS, TASKS, SimTask

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sim.md"
SEEDS = range(5)  # a task counts as supported if its expert solves at least one of these scenes
PROGRESS_SEEDS = range(3)  # the scenes tasks.py judged each progress measure on
HORIZON = 500  # MetaWorld's own episode budget
WINDOW, DRIFT = 20, 0.03  # the sim pedal's defaults: a rise this large over the window is drift


def test_every_mt50_task_is_supported_with_its_expert_and_an_instruction():
    assert set(TASKS) == set(ALL_V3_ENVIRONMENTS)
    assert len(TASKS) == 50
    for name, task in TASKS.items():
        assert task.expert is ENV_POLICY_MAP[name], name
        assert task.progress in PROGRESS_KINDS, name
        assert re.fullmatch(r"[a-z][a-z ]*[a-z]", task.instruction), (name, task.instruction)
        assert len(task.instruction.split()) <= 14, (name, task.instruction)
    instructions = [task.instruction for task in TASKS.values()]
    assert len(set(instructions)) == len(instructions)  # the prompt tells the tasks apart
    # Recorded datasets and trained prompts carry these exact strings: unchanged by the MT50 set.
    assert TASKS["reach-v3"].instruction == "reach the goal position"
    assert TASKS["push-v3"].instruction == "push the puck to the goal"
    assert TASKS["pick-place-v3"].instruction == "pick up the puck and place it at the goal"


def test_a_task_without_progress_measure_says_so():
    task = TASKS["drawer-close-v3"]
    assert task.progress is None
    with pytest.raises(ValueError, match="'drawer-close-v3' has no progress measure"):
        task.progress_distance(np.zeros(39, dtype=np.float32))


def test_docs_list_every_task_with_its_instruction():
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z0-9-]+-v3)` \| (.+?) \|", DOCS.read_text(), flags=re.MULTILINE)
    }
    assert rows == {name: task.instruction for name, task in TASKS.items()}


def _expert_run(sim: SimArm, task: SimTask, seed: int) -> tuple[bool, list[np.ndarray]]:
    """The scripted expert in scene `seed`, to success or MetaWorld's horizon: (solved, states)."""
    sim.reset_episode(seed)
    expert = task.expert()
    states = [sim.state_vector()]
    for _ in range(HORIZON):
        action = np.clip(expert.get_action(sim.state_vector()), -1.0, 1.0)
        sim.send_action(dict(zip(ACTION_NAMES, action.tolist(), strict=True)))
        states.append(sim.state_vector())
        if sim.task_success():
            return True, states
    return False, states


def _falls_steadily(task: SimTask, states: list[np.ndarray]) -> tuple[float, float]:
    """(end / start, largest rise over WINDOW frames) of the task's progress distance."""
    distance = np.array([task.progress_distance(s) for s in states])
    rises = distance[WINDOW:] - distance[:-WINDOW]
    return float(distance[-1] / distance[0]), float(rises.max(initial=0.0))


@pytest.mark.slow  # all 50 tasks: 40 s on the idle 2-core development machine, 90 s under load
@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_resets_steps_and_is_solved_by_its_expert(name):
    task = TASKS[name]
    sim = SimArm(SimArmConfig(task=name, id=f"test-mt50-{name}"))
    sim.connect()
    try:
        state = sim.state_vector()
        assert state.shape == (39,) and np.all(np.isfinite(state))
        solved = []
        for seed in SEEDS:
            if seed not in PROGRESS_SEEDS and solved:
                break
            ok, states = _expert_run(sim, task, seed)
            assert len(states) > 1 and np.all(np.isfinite(states[-1]))
            if ok:
                solved.append(seed)
            if ok and task.progress is not None and seed in PROGRESS_SEEDS:
                ratio, rise = _falls_steadily(task, states)
                assert ratio <= 2 / 3 and rise <= DRIFT, (name, seed, task.progress, ratio, rise)
        assert solved, f"{name}: its scripted expert solved none of seeds {list(SEEDS)}"
    finally:
        sim.disconnect()
