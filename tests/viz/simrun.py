"""A short rollout on the real sim, driven through the RerunLogger interface the daemon calls.

A random-walk "policy" acts, and a scripted pedal hands the arm to the simulated operator on
fixed frames, so the recording has a known intervention span.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flywheel.contracts.ticks import EpisodeEnd, Tick
from robots.sim import ACTION_NAMES, SimArm, SimArmConfig
from teleop.sim_operator import SimOperator, SimOperatorConfig

POLICY_VERSION = 3


class TickSink:
    """The part of `flywheel.contracts.ticks.TickSink` this script drives (RerunLogger is one)."""

    def start_episode(self, episode: int, task: str) -> None: ...
    def tick(self, tick: Tick) -> None: ...
    def end_episode(self, end: EpisodeEnd) -> None: ...


def sim_arm(seed: int = 3, camera: bool = False) -> SimArm:
    arm = SimArm(SimArmConfig(task="push-v3", seed=seed, camera=camera, camera_width=64, camera_height=64))
    arm.connect()
    return arm


def drive(
    logger: TickSink,
    arm: SimArm,
    frames: int,
    takeover: range,
    episodes: int = 1,
    on_tick: Any = None,
) -> list[dict[str, Any]]:
    """Run `episodes` episodes of `frames` ticks; returns the observations in tick order."""
    operator = SimOperator(SimOperatorConfig(observation_source="local", seed=0))
    operator.connect()
    rng = np.random.default_rng(0)
    seen: list[dict[str, Any]] = []
    for episode in range(episodes):
        arm.reset_episode(arm.config.seed + episode)
        logger.start_episode(episode, arm.task_description())
        walk = np.zeros(4)
        for frame in range(frames):
            observation = arm.get_observation()
            seen.append(observation)
            pedal = frame in takeover
            if pedal:
                wanted = operator.get_action()
            else:
                walk = np.clip(0.9 * walk + rng.normal(0.0, 0.3, 4), -1.0, 1.0)
                wanted = dict(zip(ACTION_NAMES, walk.tolist(), strict=True))
            sent = arm.send_action(wanted)
            action = np.array([sent[n] for n in ACTION_NAMES], dtype=np.float32)
            source, version = ("operator", 0) if pedal else ("policy", POLICY_VERSION)
            if on_tick is not None:
                on_tick()
            task = arm.task_description()
            logger.tick(Tick(episode, frame, task, observation, action, source, pedal, version, pedal))
        logger.end_episode(EpisodeEnd(episode, arm.task_success(), "timeout", "intervention"))
    return seen
