"""The rollout daemon on the simulated arm: takeover switching, exact tagging, pacing, recording."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import DatasetConfig, episode_table
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import ACTION_NAMES, SimArmConfig
from teleop.pedals import Pedal, PedalReading
from tests.netutil import free_address

POLICY_X, OPERATOR_X = 0.5, -0.5


class ConstantPolicy:
    """Always pushes +x; remembers the observations it was asked about."""

    version = 7

    def __init__(self):
        self.asked: list[np.ndarray] = []

    def predict_chunk(self, observation, task):
        self.asked.append(
            np.array([observation["hand_x.pos"], observation["hand_y.pos"], observation["hand_z.pos"]])
        )
        return np.tile(np.array([POLICY_X, 0.0, 0.0, 0.0], dtype=np.float32), (10, 1))

    def reset(self):
        pass


class ScriptedOperator:
    """A duck-typed Teleoperator that always pushes -x."""

    is_connected = False

    def connect(self):
        self.is_connected = True

    def get_action(self):
        return {"hand_x.vel": OPERATOR_X, "hand_y.vel": 0.0, "hand_z.vel": 0.0, "gripper.vel": 0.0}

    def disconnect(self):
        self.is_connected = False


class FramePedal(Pedal):
    """Down on the frames in `down`, up elsewhere."""

    def __init__(self, down: range):
        self.down = down

    def read(self, view):
        return PedalReading(pressed=view is not None and view.frame in self.down)


def make_config(root: Path, frames: int, fps: int, wire: WireConfig | None = None) -> RolloutConfig:
    return RolloutConfig(
        robot=SimArmConfig(task="push-v3", seed=3),
        policy=PolicySourceConfig(baseline="hold", version=7),
        dataset=DatasetConfig(root=root, repo_id="test/rollout"),
        wire=wire or WireConfig(),
        episodes=1,
        fps=fps,
        episode_time_s=frames / (fps or 30),
        report_cadence=False,
    )


def test_pedal_switches_the_action_source_on_the_tick_and_tags_frames_exactly(tmp_path, free_wire):
    down = range(10, 25)
    policy = ConstantPolicy()
    cfg = make_config(tmp_path / "ds", frames=40, fps=0, wire=free_wire)
    daemon = RolloutDaemon(cfg, policy=policy, link=LocalTeleop(ScriptedOperator(), FramePedal(down)))
    [result] = daemon.run()

    dataset = LeRobotDataset("test/rollout", root=tmp_path / "ds")
    frames = [dataset[i] for i in range(dataset.num_frames)]
    intervention = [bool(f["intervention"].item()) for f in frames]
    assert intervention == [i in down for i in range(40)]
    actions_x = [float(f["action"][ACTION_NAMES.index("hand_x.vel")]) for f in frames]
    assert actions_x == [OPERATOR_X if i in down else POLICY_X for i in range(40)]
    versions = [int(f["policy_version"].item()) for f in frames]
    assert versions == [0 if i in down else 7 for i in range(40)]
    assert [bool(f["next.done"].item()) for f in frames] == [i == 39 for i in range(40)]

    # On release the policy starts a fresh chunk from the observation of that very tick.
    hand_at_release = frames[down.stop]["observation.state"][:3].numpy()
    assert any(np.allclose(asked, hand_at_release, atol=1e-6) for asked in policy.asked)

    table = episode_table(dataset)
    assert table.loc[0, "data_type"] == "intervention"
    assert table.loc[0, "num_intervention_frames"] == len(down) == result.intervention_frames
    assert result.takeovers == 1
    assert list(table.loc[0, "policy_versions"]) == [0, 7]


def test_autonomous_episode_is_auto_and_demo_when_the_operator_drives_throughout(tmp_path, free_wire):
    cfg = make_config(tmp_path / "auto", frames=15, fps=0, wire=free_wire)
    RolloutDaemon(
        cfg, policy=ConstantPolicy(), link=LocalTeleop(ScriptedOperator(), FramePedal(range(0)))
    ).run()
    assert episode_table(LeRobotDataset("t", root=tmp_path / "auto")).loc[0, "data_type"] == "auto"

    cfg = make_config(tmp_path / "demo", frames=15, fps=0, wire=free_wire)
    cfg.policy.version = 0  # flywheel record: no policy
    policy = ConstantPolicy()
    policy.version = 0
    RolloutDaemon(cfg, policy=policy, link=LocalTeleop(ScriptedOperator(), FramePedal(range(15)))).run()
    assert episode_table(LeRobotDataset("t", root=tmp_path / "demo")).loc[0, "data_type"] == "demo"


def test_loop_paces_ticks_at_the_control_rate(tmp_path, free_wire):
    """Pacing, not speed: the loop must neither run ahead of 30 Hz nor skip ticks. (Lateness
    figures belong to `flywheel bench`, not to a test.)"""
    fps, frames = 30, 45
    cfg = make_config(tmp_path / "ds", frames=frames, fps=fps, wire=free_wire)
    daemon = RolloutDaemon(
        cfg, policy=ConstantPolicy(), link=LocalTeleop(ScriptedOperator(), FramePedal(range(0)))
    )
    start = time.perf_counter()
    [result] = daemon.run()
    assert result.frames == frames
    assert result.cadence.ticks == frames
    work_span = time.perf_counter() - start
    assert work_span >= (frames - 1) / fps  # not faster than the rate
    # Each tick starts at its slot: lateness stays below one period at the median.
    assert result.cadence.lateness_p50_ms < 1000 / fps


@pytest.fixture
def free_wire() -> WireConfig:
    return WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address())
