"""The batched evaluator runs the daemon's evaluation scenes by the daemon's rules.

What is compared exactly, action by action (every command each scene sent to the sim):
- a deterministic scripted policy (MetaWorld's expert, amplified past the sim's clip, with chunks
  that hold a step when non-finite): the daemon path and the batched one at several batch sizes;
- the tiny pi_star_recap, unguided and with CFG: the daemon path and batch size 1 from the same
  torch generator state (the flow-matching noise is drawn from it in the same order).
A sampling policy at batch size > 1 draws its noise for several scenes at once, so its outcomes
cannot equal the daemon's; with the noise pinned per observation, one call on N observations gives
what N calls on one give (to float rounding: a batched matrix product may round differently).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.fixtures import tiny_sim_checkpoint
from robots.sim import ACTION_NAMES, STATE_NAMES, SimArm
from robots.sim.tasks import get_task
from trainer.evaluate import EVAL_SEED_OFFSET, scenes_in_sim, summarize_scenes
from trainer.evaluate_batched import (
    evaluate_batched,
    load_batch_policy,
    run_scenes,
    scenes_batched,
    sim_arms,
)

SCENES = 6


class ScriptedPolicy:
    """MetaWorld's expert action, repeated open-loop over a chunk and amplified beyond the sim's
    [-1, 1] clip; a chunk is NaN whenever the hand's x lands on a particular 0.1 mm (a few times per
    scene), which the daemon's runner drops and holds for."""

    version = 1

    def __init__(self, task: str, chunk: int = 6, gain: float = 2.5):
        self.expert, self.chunk, self.gain = get_task(task).expert(), chunk, gain
        self.non_finite = 0

    def predict_chunk(self, observation: dict[str, Any], task: str) -> np.ndarray:
        state = np.array([observation[name] for name in STATE_NAMES], dtype=np.float64)
        action = self.expert.get_action(state) * self.gain
        if round(observation["hand_x.pos"] * 1e4) % 7 == 0:
            self.non_finite += 1
            action = action * np.nan
        return np.tile(action, (self.chunk, 1)).astype(np.float32)

    def predict_chunks(self, observations: list[dict[str, Any]], tasks: list[str]) -> np.ndarray:
        return np.stack([self.predict_chunk(o, t) for o, t in zip(observations, tasks, strict=True)])

    def reset(self) -> None:
        pass


@pytest.fixture
def sent(monkeypatch) -> dict[int, list[tuple[float, ...]]]:
    """Every action each scene (by its seed) sent to the sim, after the sim's clip."""
    actions: dict[int, list[tuple[float, ...]]] = defaultdict(list)
    original = SimArm.send_action

    def recording(self: SimArm, action: dict[str, Any]) -> dict[str, Any]:
        done = original(self, action)
        actions[self.episode_seed].append(tuple(done.values()))
        return done

    monkeypatch.setattr(SimArm, "send_action", recording)
    return actions


def taken(sent: dict) -> dict:
    """What was recorded so far, and a fresh start for the next run."""
    copy = dict(sent)
    sent.clear()
    return copy


def test_scripted_policy_same_scenes_same_actions_as_the_daemon(tmp_path: Path, sent: dict):
    task, horizon = "push-v3", 75  # scenes succeed at 73-81 steps: some at the very last one
    policy = ScriptedPolicy(task)
    daemon = scenes_in_sim(None, task, SCENES, tmp_path / "daemon", horizon=horizon, policy=policy)
    daemon_actions = taken(sent)
    assert policy.non_finite > 0  # the hold-on-a-bad-chunk rule was exercised
    outcomes = {(o.success, o.steps) for o in daemon}
    assert {s for s, _ in outcomes} == {True, False}  # both ends: success and the horizon
    for batch_size in (1, 4, SCENES):
        run = run_scenes(ScriptedPolicy(task), task, SCENES, horizon=horizon, batch_size=batch_size)
        assert run.outcomes == daemon, f"batch_size {batch_size}"
        assert taken(sent) == daemon_actions, f"batch_size {batch_size}"
        assert run.env_steps == sum(o.steps for o in daemon)
        assert run.non_finite_chunks > 0


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_pi_star_recap_batch_of_one_equals_the_daemon(tmp_path: Path, sent: dict, cfg_scale: float):
    path = tiny_sim_checkpoint(tmp_path / "policy", chunk_size=10, cfg_scale=cfg_scale)
    torch.manual_seed(7)
    daemon = scenes_in_sim(path, "push-v3", 3, tmp_path / "daemon", horizon=25)
    daemon_actions = taken(sent)
    torch.manual_seed(7)
    batched = scenes_batched(path, "push-v3", 3, horizon=25, batch_size=1)
    assert batched.outcomes == daemon
    assert taken(sent) == daemon_actions
    assert batched.policy_calls == 3 * 3  # chunks of 10 over 25 steps, per scene
    torch.manual_seed(7)
    result = evaluate_batched(path, "push-v3", 3, horizon=25, batch_size=1)
    np.testing.assert_equal(asdict(result), asdict(summarize_scenes(daemon, 25)))  # NaN equals NaN here


class PinnedNoise:
    """The tiny policy with its flow-matching noise drawn per row from the row's own state, so a
    row's chunk does not depend on which rows share its batch."""

    def __init__(self, path: Path):
        self.inner = load_batch_policy(path)
        network = self.inner.policy
        sample = network.predict_action_chunk
        shape = (network.config.chunk_size, network.config.max_action_dim)

        def pinned(batch: dict, **kwargs: Any) -> torch.Tensor:
            noise = [torch.randn(shape, generator=_generator(row)) for row in batch["observation.state"]]
            return sample(batch, noise=torch.stack(noise), **kwargs)

        network.predict_action_chunk = pinned

    def predict_chunks(self, observations: list[dict[str, Any]], tasks: list[str]) -> np.ndarray:
        return self.inner.predict_chunks(observations, tasks)

    def reset(self) -> None:
        self.inner.reset()


def _generator(row: torch.Tensor) -> torch.Generator:
    digest = hashlib.sha256(row.detach().cpu().numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_pi_star_recap_batch_of_n_gives_n_batches_of_one(tmp_path: Path, cfg_scale: float):
    # Per call, not per run: an untrained policy is chaotic, so a rounding difference in one chunk
    # (a batched matrix product) grows into a different trajectory within a few chunks. Whole runs
    # at several batch sizes are compared exactly with the scripted policy above.
    path = tiny_sim_checkpoint(tmp_path / "policy", chunk_size=10, cfg_scale=cfg_scale)
    policy = PinnedNoise(path)
    observations = scene_observations("push-v3", scenes=4, steps=(0, 12, 30))
    tasks = [get_task("push-v3").instruction] * len(observations)
    together = policy.predict_chunks(observations, tasks)
    alone = np.concatenate(
        [policy.predict_chunks([o], [t]) for o, t in zip(observations, tasks, strict=True)]
    )
    assert together.shape == (len(observations), 10, 4)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.abs(together[1:] - together[:-1]).max() > 0.01  # rows differ: nothing was broadcast
    # Each row's own task reaches the policy.
    other = get_task("pick-place-v3").instruction
    same_scene = policy.predict_chunks([observations[0]] * 2, [tasks[0], other])
    np.testing.assert_allclose(same_scene[0], together[0], atol=1e-5)
    # (The untrained tiny policy hears its prompt faintly: about 1e-3, against 1e-6 of rounding.)
    assert np.abs(same_scene[1] - same_scene[0]).max() > 1e-4


def test_one_observation_is_fed_as_lerobot_feeds_it(tmp_path: Path):
    """The daemon's predict_chunk, now a batch of one, computes what it computed before."""
    from lerobot.policies.utils import prepare_observation_for_inference
    from lerobot.utils.feature_utils import build_dataset_frame

    policy = load_batch_policy(tiny_sim_checkpoint(tmp_path / "policy", chunk_size=10))
    observation = scene_observations("push-v3", scenes=1, steps=(5,))[0]
    task = get_task("push-v3").instruction
    frame = build_dataset_frame(policy.features, observation, prefix="observation")
    batch = prepare_observation_for_inference(frame, torch.device("cpu"), task, robot_type=None)
    torch.manual_seed(3)
    with torch.inference_mode():
        before = policy.postprocess(policy.policy.predict_action_chunk(policy.preprocess(batch)))
    torch.manual_seed(3)
    np.testing.assert_array_equal(policy.predict_chunk(observation, task), before.squeeze(0).numpy())


def scene_observations(task: str, scenes: int, steps: tuple[int, ...]) -> list[dict[str, Any]]:
    """Observations of the evaluation scenes at a few step counts along the expert's way."""
    expert, out = get_task(task).expert(), []
    for index, arm in enumerate(sim_arms(task, EVAL_SEED_OFFSET, scenes)):
        arm.reset_episode(EVAL_SEED_OFFSET + index)
        for step in range(max(steps) + 1):
            observation = arm.get_observation()
            if step in steps:
                out.append(observation)
            action = expert.get_action(np.array([observation[n] for n in STATE_NAMES]))
            arm.send_action(dict(zip(ACTION_NAMES, action.tolist(), strict=True)))
    return out


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("episodes", {"episodes": 0}),
        ("batch_size", {"batch_size": 0}),
        ("horizon", {"horizon": -1}),
        ("batch_size", {"batch_size": 2.5}),
        ("task", {"task": "push-v9"}),
    ],
)
def test_bad_inputs_are_refused_naming_the_field(tmp_path: Path, field: str, overrides: dict):
    kwargs = {"task": "push-v3", "episodes": 2, "batch_size": 2, "horizon": 10} | overrides
    with pytest.raises(ValueError, match=rf"^{field}: "):
        evaluate_batched(tmp_path / "no-policy", **kwargs)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        run_scenes(ScriptedPolicy("push-v3"), **kwargs)


def test_the_daemon_path_refuses_zero_episodes(tmp_path: Path):
    # The daemon reads 0 episodes as "run until stopped": an evaluation would never end.
    with pytest.raises(ValueError, match=r"^episodes: 0 "):
        scenes_in_sim(None, "push-v3", 0, tmp_path / "daemon")


def test_a_chunk_per_observation_is_required():
    class OneRowShort(ScriptedPolicy):
        def predict_chunks(self, observations, tasks):
            return super().predict_chunks(observations, tasks)[1:]

    with pytest.raises(ValueError, match=r"^policy chunks: shape"):
        run_scenes(OneRowShort("push-v3"), "push-v3", 3, horizon=10, batch_size=3)
