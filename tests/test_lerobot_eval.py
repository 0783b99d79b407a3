"""The sim as a LeRobot environment: its gym contract; stock `lerobot-eval` on a pi_star_recap checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.fixtures import tiny_sim_checkpoint
from robots.sim import STATE_NAMES, get_task

os.environ.setdefault("MUJOCO_GL", "egl")


def test_the_env_type_is_registered_with_lerobot():
    from lerobot.envs.configs import EnvConfig

    from robots.sim.gym_env import FlywheelSimEnvConfig

    assert EnvConfig.get_choice_class("flywheel_sim") is FlywheelSimEnvConfig


def test_observations_map_to_the_keys_flywheel_records():
    from lerobot.envs.factory import make_env
    from lerobot.envs.utils import env_to_policy_features, preprocess_observation

    from robots.sim.gym_env import FlywheelSimEnvConfig

    cfg = FlywheelSimEnvConfig(task="reach-v3", camera=True, camera_width=32, camera_height=24)
    assert env_to_policy_features(cfg).keys() == {"action", "observation.state", "observation.images.front"}
    vec = make_env(cfg, n_envs=1)["flywheel_sim"][0]
    try:
        raw, _ = vec.reset(seed=[3])
        obs = preprocess_observation(raw)
        # LeRobot 0.6 dropped add_envs_task: its rollout reads the task from the sub-envs this way.
        obs["task"] = list(vec.call("task_description"))
    finally:
        vec.close()
    assert obs["observation.state"].shape == (1, len(STATE_NAMES))
    assert obs["observation.images.front"].shape == (1, 3, 24, 32)
    assert obs["task"] == [get_task("reach-v3").instruction]


def test_an_expert_succeeds_and_success_ends_the_episode():
    from robots.sim.gym_env import FlywheelSimEnv

    env = FlywheelSimEnv(task="reach-v3", episode_length=150)
    expert = get_task("reach-v3").expert()
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(150):
            obs, reward, terminated, truncated, info = env.step(expert.get_action(obs["agent_pos"]))
            if terminated or truncated:
                break
    finally:
        env.close()
    assert terminated and not truncated, "the expert did not succeed in 150 steps"
    assert reward == 1.0 and info["is_success"]


def test_a_random_policy_is_truncated_at_episode_length():
    from robots.sim.gym_env import FlywheelSimEnv

    env = FlywheelSimEnv(task="push-v3", episode_length=5)
    try:
        env.reset(seed=1)
        ends = [env.step(np.zeros(4, dtype=np.float32))[2:4] for _ in range(5)]
    finally:
        env.close()
    assert ends == [(False, False)] * 4 + [(False, True)]


def test_bad_env_config_names_the_field():
    from robots.sim.gym_env import FlywheelSimEnvConfig

    with pytest.raises(ValueError, match=r"env\.task: unknown sim task 'fly-v1'"):
        FlywheelSimEnvConfig(task="fly-v1")
    with pytest.raises(ValueError, match=r"env\.episode_length: 0"):
        FlywheelSimEnvConfig(episode_length=0)


def test_stock_lerobot_eval_runs_a_pi_star_recap_checkpoint(tmp_path: Path):
    checkpoint = tiny_sim_checkpoint(tmp_path / "ckpt", chunk_size=10)
    cmd = [
        str(Path(sys.executable).parent / "lerobot-eval"),
        f"--policy.path={checkpoint}",
        "--policy.device=cpu",
        "--env.type=flywheel_sim",
        "--env.task=push-v3",
        "--env.episode_length=25",
        "--eval.n_episodes=2",
        "--eval.batch_size=1",
        f"--output_dir={tmp_path / 'eval'}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    overall = json.loads((tmp_path / "eval" / "eval_info.json").read_text())["overall"]
    assert overall["n_episodes"] == 2
    videos = [Path(p) for p in overall["video_paths"]]
    assert len(videos) == 2 and all(v.stat().st_size > 0 for v in videos)
