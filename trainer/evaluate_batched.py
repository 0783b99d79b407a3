"""Evaluating a policy checkpoint on many held-out sim scenes at once: the demo's evaluation.

The same scenes, by the same rules, as the rollout daemon's evaluation (trainer/evaluate.py:
evaluate_in_sim), but `batch_size` scenes step in lockstep and every scene that needs a new chunk
in a step gets it from one policy call (as lerobot-eval's rollout does over a vector env):

- scene i is the sim arm `SimArmConfig(task, seed)` reset to scene seed `seed + i`;
- every row carries the sim task's instruction, the task the daemon records;
- when a scene's actions run out, its next chunk is computed on its current observation and all of
  the chunk's actions are executed, as the daemon's policy runner does in lockstep; a chunk with a
  non-finite value is dropped and the scene holds for that step, then asks again (the runner too);
- each action passes the daemon's safety layer (default settings), then the sim's clip to [-1, 1];
- a scene ends on the step MetaWorld first reports success (its steps count that step), else after
  `horizon` steps.

What differs from the daemon path: nothing is recorded; a policy call that raises stops the
evaluation (the daemon would log it and hold, which would read as a silent failure); the policy is
reset once per evaluation, not per scene (LeRobot's predict_action_chunk keeps no state between
calls); a sampling policy draws its noise from torch's global generator in batch order, so for
batch_size > 1 the outcomes differ from the daemon's by that noise only (at batch_size 1, with the
same generator state, they are equal: tests/test_evaluate_batched.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from flywheel.contracts.dataset import DatasetConfig, dataset_features
from flywheel.rollout.policy_source import (
    LeRobotChunkPolicy,
    PolicySourceConfig,
    hold_action,
    make_chunk_policy,
)
from flywheel.rollout.safety import SafetyConfig, SafetyLayer
from robots.sim import SimArm, SimArmConfig
from robots.sim.tasks import get_task
from trainer.evaluate import EVAL_SEED_OFFSET, EvalResult, SceneOutcome, check_counts, summarize_scenes

DEFAULT_BATCH_SIZE = 25


class BatchChunkPolicy(Protocol):
    def predict_chunks(self, observations: list[dict[str, Any]], tasks: list[str]) -> np.ndarray:
        """Actions for each observation's next steps: shape (rows, steps, action_dim)."""
        ...

    def reset(self) -> None: ...


@dataclass
class BatchedRun:
    outcomes: list[SceneOutcome]  # in scene order
    policy_calls: int = 0
    policy_s: float = 0.0  # in predict_chunks (observation to batch, inference, post-processing)
    sim_s: float = 0.0  # everything else: MetaWorld stepping and resets, safety, bookkeeping
    env_steps: int = 0
    non_finite_chunks: int = 0  # dropped (the scene held a step); the daemon logs the same as errors


def evaluate_batched(
    policy_path: Path,
    task: str,
    episodes: int,
    seed: int = EVAL_SEED_OFFSET,
    horizon: int = 200,
    batch_size: int = DEFAULT_BATCH_SIZE,
    version: int = 1,
    device: str = "cpu",
) -> EvalResult:
    """evaluate_in_sim's result for the same scenes, `batch_size` scenes at a time."""
    run = scenes_batched(policy_path, task, episodes, seed, horizon, batch_size, version, device)
    return summarize_scenes(run.outcomes, horizon)


def scenes_batched(
    policy_path: Path,
    task: str,
    episodes: int,
    seed: int = EVAL_SEED_OFFSET,
    horizon: int = 200,
    batch_size: int = DEFAULT_BATCH_SIZE,
    version: int = 1,
    device: str = "cpu",
) -> BatchedRun:
    """Each scene's outcome, with where the time went; the policy is loaded as the daemon loads it."""
    _check_inputs(task, episodes, horizon, batch_size)  # before the policy is loaded
    policy = load_batch_policy(policy_path, version, device)
    return run_scenes(policy, task, episodes, seed, horizon, batch_size)


def load_batch_policy(policy_path: Path, version: int = 1, device: str = "cpu") -> LeRobotChunkPolicy:
    """A LeRobot pretrained policy folder, loaded by the daemon's own code (policy_source) with the
    features the daemon gives it for the sim arm."""
    arm = SimArm(SimArmConfig())  # for its feature lists only: nothing is connected
    features = dataset_features(arm.observation_features, arm.action_features, DatasetConfig().video)
    source = PolicySourceConfig(path=Path(policy_path), version=version, device=device)
    policy = make_chunk_policy(source, features, list(arm.action_features))
    assert isinstance(policy, LeRobotChunkPolicy)  # a path always gives one
    return policy


def run_scenes(
    policy: BatchChunkPolicy,
    task: str,
    episodes: int,
    seed: int = EVAL_SEED_OFFSET,
    horizon: int = 200,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> BatchedRun:
    """Scenes seed .. seed + episodes - 1, at most batch_size at a time; a finished scene's arm
    takes the next scene, so the batch stays full until the last ones."""
    _check_inputs(task, episodes, horizon, batch_size)
    arms = sim_arms(task, seed, min(batch_size, episodes))
    instruction = arms[0].task_description() or "do the task"  # the daemon's default task
    action_names = list(arms[0].action_features)
    run = BatchedRun([])
    policy.reset()
    began = time.perf_counter()
    waiting = deque(range(episodes))
    running = [_Scene.start(arm, waiting.popleft(), seed) for arm in arms]
    outcomes: dict[int, SceneOutcome] = {}
    while running:
        for scene in running:
            scene.observation = scene.arm.get_observation()
        _refill([s for s in running if not s.actions], policy, instruction, run)
        for scene in list(running):
            if scene.step(action_names, horizon):
                outcomes[scene.index] = scene.outcome(seed)
                _next_scene(scene, running, waiting, seed)
    run.env_steps = sum(o.steps for o in outcomes.values())
    run.sim_s = time.perf_counter() - began - run.policy_s
    run.outcomes = [outcomes[i] for i in range(episodes)]
    return run


def _check_inputs(task: str, episodes: int, horizon: int, batch_size: int) -> None:
    get_task(task, field="task")
    check_counts(episodes=episodes, horizon=horizon, batch_size=batch_size)


@dataclass
class _Scene:
    index: int  # scene number in this evaluation: its seed is the first seed + index
    arm: SimArm
    safety: SafetyLayer
    steps: int = 0
    actions: deque[np.ndarray] = field(default_factory=deque)
    observation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, arm: SimArm, index: int, seed: int) -> _Scene:
        arm.reset_episode(seed + index)
        names = list(arm.action_features)
        safety = SafetyLayer(SafetyConfig(), names, list(arm.observation_features))
        # The daemon restarts its step limit from the arm's pose on an episode's first frame.
        safety.reset(arm.get_observation())
        return cls(index, arm, safety)

    def step(self, action_names: list[str], horizon: int) -> bool:
        """One control step, as the daemon's tick takes it; True when the scene is over."""
        hold = hold_action(self.observation, action_names)
        action = self.actions.popleft() if self.actions else hold  # no chunk (non-finite): hold
        action = self.safety.apply(action, hold)
        self.arm.send_action(dict(zip(action_names, action.tolist(), strict=True)))
        self.steps += 1
        return self.arm.task_success() or self.steps >= horizon

    def outcome(self, seed: int) -> SceneOutcome:
        return SceneOutcome(seed + self.index, self.arm.task_success(), self.steps)


def _next_scene(scene: _Scene, running: list[_Scene], waiting: deque[int], seed: int) -> None:
    position = running.index(scene)
    if waiting:
        running[position] = _Scene.start(scene.arm, waiting.popleft(), seed)
    else:
        del running[position]


def _refill(scenes: list[_Scene], policy: BatchChunkPolicy, instruction: str, run: BatchedRun) -> None:
    """One policy call for every scene whose actions ran out."""
    if not scenes:
        return
    began = time.perf_counter()
    chunks = policy.predict_chunks([s.observation for s in scenes], [instruction] * len(scenes))
    chunks = np.asarray(chunks, dtype=np.float32)
    run.policy_s += time.perf_counter() - began
    run.policy_calls += 1
    if chunks.ndim != 3 or chunks.shape[0] != len(scenes):
        raise ValueError(
            f"policy chunks: shape {chunks.shape} for {len(scenes)} observations; "
            "expected (observations, steps, action_dim)"
        )
    for scene, chunk in zip(scenes, chunks, strict=True):
        if np.all(np.isfinite(chunk)):
            scene.actions = deque(chunk)
        else:
            run.non_finite_chunks += 1


# --- the sim arms ----------------------------------------------------------------------------------
# Connecting a sim arm costs about 0.5 s (MetaWorld's MT1 resets its scene 50 times to draw its task
# set) and 20 MB; resetting a connected one to another scene seed costs about 10 ms. So the arms are
# kept, per (task, seed), for the next evaluation in this process (the demo evaluates 7 methods on
# the same scenes): the last few such sets, the older ones disconnected.
_ARMS: OrderedDict[tuple[str, int], list[SimArm]] = OrderedDict()
KEPT_ARM_SETS = 4


def sim_arms(task: str, seed: int, count: int) -> list[SimArm]:
    """`count` connected arms of `task` whose scene seed + i is evaluate_in_sim's scene i."""
    key = (task, seed)
    arms = _ARMS.pop(key, [])
    while len(arms) < count:
        arm = SimArm(SimArmConfig(task=task, seed=seed))
        arm.connect()
        arms.append(arm)
    _ARMS[key] = arms
    while len(_ARMS) > KEPT_ARM_SETS:
        _disconnect(_ARMS.popitem(last=False)[1])
    return arms[:count]


def release_sim_arms() -> None:
    """Disconnect every kept arm (their memory back)."""
    while _ARMS:
        _disconnect(_ARMS.popitem()[1])


def _disconnect(arms: list[SimArm]) -> None:
    for arm in arms:
        if arm.is_connected:
            arm.disconnect()
