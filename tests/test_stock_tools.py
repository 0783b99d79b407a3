"""The sim under stock LeRobot's own entry points: lerobot-record, lerobot-replay, lerobot-teleoperate.

Each test runs the real console script in a subprocess (about 15-30 s each, mostly imports), bounded by
a timeout; docs/sim.md shows the same commands and their output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robots.sim import SimArm, SimArmConfig
from robots.sim.tasks import ACTION_NAMES

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": "egl", "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
REPO_ID = "local/sim"
SEED = 7  # not 0, so the test shows that episode i is recorded in scene seed + i
EPISODES = 2


def _run(script: str, *args: str, cwd: Path, timeout: float = 180) -> str:
    result = subprocess.run(
        [str(BIN / script), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, str]:
    """Two short episodes recorded by stock lerobot-record, with a reset phase between them in which
    the simulated operator keeps driving (unrecorded), as it would on a real arm."""
    tmp = tmp_path_factory.mktemp("record")
    root = tmp / "dataset"
    output = _run(
        "lerobot-record",
        "--robot.type=sim",
        "--robot.task=push-v3",
        f"--robot.seed={SEED}",
        "--teleop.type=sim_operator",
        "--teleop.observation_source=local",
        f"--dataset.repo_id={REPO_ID}",
        f"--dataset.root={root}",
        "--dataset.single_task=push the puck to the goal",
        f"--dataset.num_episodes={EPISODES}",
        "--dataset.episode_time_s=1",
        "--dataset.reset_time_s=0.5",
        "--dataset.fps=30",
        "--dataset.push_to_hub=false",
        "--display_data=false",
        "--play_sounds=false",
        cwd=tmp,
    )
    return root, output


def _dataset(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO_ID, root=root)


def replay_in_scene(task: str, seed: int, episode: int, actions: np.ndarray) -> tuple[np.ndarray, bool]:
    """Send a recorded episode's actions again in its own scene (the sim arm's `seed`, `episode`),
    from its first state: the state before each action, and whether the task ended solved."""
    sim = SimArm(SimArmConfig(task=task, seed=seed, episode=episode, id="test-stock-replay"))
    sim.connect()
    try:
        sim.follow_stock_episode(None)
        replayed = []
        for action in actions:
            replayed.append(sim.state_vector())
            sim.send_action(dict(zip(ACTION_NAMES, action.tolist(), strict=True)))
        return np.stack(replayed), sim.task_success()
    finally:
        sim.disconnect()


def _episode(dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(states, actions) of one episode, frame by frame."""
    frames = [frame for frame in (dataset[i] for i in range(len(dataset))) if frame["episode_index"] == index]
    assert frames, f"no frames of episode {index}"
    states = np.stack([f["observation.state"].numpy() for f in frames])
    actions = np.stack([f["action"].numpy() for f in frames])
    return states, actions


def _scene(episode: int) -> np.ndarray:
    """The scene the sim sets up for episode `episode` of a run seeded SEED."""
    sim = SimArm(SimArmConfig(task="push-v3", seed=SEED, episode=episode, id="test-stock-scene"))
    sim.connect()
    try:
        return sim.state_vector()
    finally:
        sim.disconnect()


def test_record_saves_every_episode(recorded):
    root, output = recorded
    dataset = _dataset(root)
    assert dataset.meta.total_episodes == EPISODES
    lengths = [len(_episode(dataset, i)[0]) for i in range(EPISODES)]
    assert all(length > 0 for length in lengths), lengths
    assert dataset.meta.robot_type == "sim"
    assert dataset.features["action"]["names"] == list(ACTION_NAMES)
    assert dataset.features["observation.state"]["shape"] == (39,)
    assert f"recording episode 1 in scene seed {SEED + 1}" in output


def test_each_recorded_episode_starts_in_its_own_scene(recorded):
    root, _ = recorded
    dataset = _dataset(root)
    first, _ = _episode(dataset, 0)
    second, _ = _episode(dataset, 1)
    # Episode i starts in the fresh scene of seed + i: not where episode i - 1 (or the operator's
    # driving in the reset phase after it) left the arm.
    np.testing.assert_array_equal(first[0], _scene(0))
    np.testing.assert_array_equal(second[0], _scene(1))
    assert not np.allclose(second[0], first[-1], atol=1e-3)


def test_replay_drives_the_recorded_episode_again(recorded, tmp_path):
    root, _ = recorded
    states, actions = _episode(_dataset(root), 1)
    # The recording is reproducible: its actions, sent in its scene, give its states again.
    replayed, success = replay_in_scene("push-v3", SEED, 1, actions)
    np.testing.assert_allclose(replayed, states, rtol=0, atol=1e-5)
    # Stock lerobot-replay in that scene: the recording's seed, and the episode index.
    output = _run(
        "lerobot-replay",
        "--robot.type=sim",
        "--robot.task=push-v3",
        f"--robot.seed={SEED}",
        "--robot.episode=1",
        f"--dataset.repo_id={REPO_ID}",
        f"--dataset.root={root}",
        "--dataset.episode=1",
        "--play_sounds=false",
        cwd=tmp_path,
    )
    assert f"disconnected after {len(actions)} steps of scene seed {SEED + 1} (success {success})" in output


def test_teleoperate_runs_on_past_metaworlds_step_budget(tmp_path):
    # Not a timed run: the teleoperator goes on until the sim has moved past MetaWorld's 500-step
    # budget twice (each time into a new scene), then gets Ctrl-C; teleop_time_s only bounds a hang.
    process = subprocess.Popen(
        [
            str(BIN / "lerobot-teleoperate"),
            "--robot.type=sim",
            "--teleop.type=sim_operator",
            "--teleop.observation_source=local",
            "--fps=1000",
            "--teleop_time_s=240",
            "--display_data=false",
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines, budgets = [], 0
    try:
        for line in process.stderr:  # to the end: the lines after Ctrl-C show how it stopped
            lines.append(line)
            budgets += "ran 500 steps; next scene" in line
            if budgets == 2 and "ran 500 steps" in line:
                process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines)
    assert process.returncode == 0, output[-4000:]
    assert "scene seed 0 ran 500 steps; next scene" in output
    assert "scene seed 1 ran 500 steps; next scene" in output
    assert "disconnected after" in output
