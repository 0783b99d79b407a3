"""The safety layer: joint limits, non-finite commands, and the bumpless (step-limited) takeover."""

from __future__ import annotations

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.safety import SafetyConfig, SafetyLayer
from flywheel.rollout.teleop_link import LocalTeleop
from tests.netutil import free_address
from tests.test_rollout import FramePedal

JOINTS = ["shoulder.pos", "elbow.pos", "wrist.pos"]


class PositionArm:
    """A position-controlled arm that reaches each commanded position at once (the worst case for
    jumps: nothing in the hardware smooths them)."""

    name = "position_arm"

    def __init__(self):
        self.position = {j: 0.0 for j in JOINTS}
        self.is_connected = False

    observation_features = property(lambda self: dict.fromkeys(JOINTS, float))
    action_features = property(lambda self: dict.fromkeys(JOINTS, float))

    def connect(self, calibrate: bool = True):
        self.is_connected = True

    def get_observation(self):
        return dict(self.position)

    def send_action(self, action):
        self.position = {j: float(action[j]) for j in JOINTS}
        return dict(self.position)

    def disconnect(self):
        self.is_connected = False


class FarAwayLeader:
    """The leader arm held somewhere else than the follower: 60 units away on every joint."""

    is_connected = False

    def connect(self):
        self.is_connected = True

    def get_action(self):
        return {j: 60.0 for j in JOINTS}

    def disconnect(self):
        self.is_connected = False


class StillPolicy:
    version = 3

    def predict_chunk(self, observation, task):
        return np.zeros((10, len(JOINTS)), dtype=np.float32)

    def reset(self):
        pass


def test_layer_clamps_limits_replaces_nan_and_limits_steps():
    layer = SafetyLayer(SafetyConfig(max_step=2.0, joint_limits={"elbow.pos": [-10, 10]}), JOINTS, JOINTS)
    layer.reset(dict.fromkeys(JOINTS, 0.0))
    out = layer.apply(np.array([1.0, 50.0, -1.0]), hold=np.zeros(3))
    np.testing.assert_allclose(out, [1.0, 2.0, -1.0])  # elbow clamped to 10, then stepped by 2
    out = layer.apply(np.array([np.nan, 0.0, 0.0]), hold=np.array([1.0, 2.0, -1.0]))
    np.testing.assert_allclose(out, [1.0, 2.0, -1.0])  # NaN: the hold action instead
    assert layer.events["joint_limit"] == 1
    assert layer.events["step_limit"] == 1
    assert layer.events["non_finite_command"] == 1


def test_delta_controlled_robots_get_no_step_limit():
    layer = SafetyLayer(SafetyConfig(max_step=0.1), ["hand_x.vel"], ["hand_x.pos"])
    assert not layer.position_controlled
    np.testing.assert_allclose(layer.apply(np.array([0.9]), hold=np.zeros(1)), [0.9])


def test_bad_safety_config_names_the_field():
    with pytest.raises(ValueError, match=r"safety\.max_step"):
        SafetyConfig(max_step=0)
    with pytest.raises(ValueError, match=r"safety\.joint_limits\.elbow\.pos"):
        SafetyConfig(joint_limits={"elbow.pos": [5, -5]})


def test_after_pedal_down_no_tick_exceeds_the_step_limit(tmp_path):
    max_step, down = 4.0, range(10, 45)
    cfg = RolloutConfig(
        dataset=DatasetConfig(root=tmp_path / "ds", repo_id="test/safety"),
        wire=WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address()),
        episodes=1,
        fps=0,
        episode_time_s=60 / 30,
        report_cadence=False,
        safety=SafetyConfig(max_step=max_step),
    )
    daemon = RolloutDaemon(cfg, robot=PositionArm(), policy=StillPolicy(),
                           link=LocalTeleop(FarAwayLeader(), FramePedal(down)))  # fmt: skip
    daemon.run()

    dataset = LeRobotDataset("test/safety", root=tmp_path / "ds")
    sent = np.stack([dataset[i]["action"].numpy() for i in range(dataset.num_frames)])
    steps = np.abs(np.diff(sent, axis=0))
    assert steps.max() <= max_step + 1e-5  # never a jump, neither at pedal down nor at release
    # ... and the handover is bounded in time: the follower reaches the leader within 60/4 ticks.
    reached = down.start + int(np.ceil(60 / max_step))
    np.testing.assert_allclose(sent[reached], 60.0)
    np.testing.assert_allclose(sent[down.start - 1], 0.0)
    assert daemon.safety.events["step_limit"] > 0
