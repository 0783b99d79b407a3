"""Faults the control loop must survive without sending anything bad: a policy that returns NaN or
raises, and an operator stream that goes stale mid-intervention (a teleop process that died)."""

from __future__ import annotations

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import DataType
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.teleop_link import TeleopLink, TeleopSnapshot
from tests.netutil import free_address
from tests.test_rollout import FramePedal, LocalTeleop, ScriptedOperator, make_config
from tests.test_safety import JOINTS, PositionArm, StillPolicy


class BrokenPolicy:
    """NaN chunks on odd calls, an exception on even ones."""

    version = 5

    def __init__(self):
        self.calls = 0

    def predict_chunk(self, observation, task):
        self.calls += 1
        if self.calls % 2:
            return np.full((10, len(JOINTS)), np.nan, dtype=np.float32)
        raise RuntimeError("CUDA error: an illegal memory access (simulated)")

    def reset(self):
        pass


class DeadTeleop(TeleopLink):
    """The teleop process died with the pedal down: its last state says pressed, and it ages."""

    def start(self):
        pass

    def poll(self, view, wait):
        return TeleopSnapshot(pressed=True, action={j: 90.0 for j in JOINTS}, age_s=5.0)

    def stop(self):
        pass


def _free_wire() -> WireConfig:
    return WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address())


def _sent_actions(root) -> np.ndarray:
    dataset = LeRobotDataset("test/faults", root=root)
    return np.stack([dataset[i]["action"].numpy() for i in range(dataset.num_frames)])


def test_a_failing_policy_never_moves_the_arm_and_the_loop_runs_on(tmp_path):
    cfg = make_config(tmp_path / "ds", frames=30, fps=0, wire=_free_wire())
    cfg.robot = None
    daemon = RolloutDaemon(cfg, robot=PositionArm(), policy=BrokenPolicy(),
                           link=LocalTeleop(ScriptedOperator(), FramePedal(range(0))))  # fmt: skip
    [result] = daemon.run()
    assert result.frames == 30  # the episode ran to its end
    np.testing.assert_allclose(_sent_actions(tmp_path / "ds"), 0.0)  # held where it was, every tick
    assert daemon.runner.errors >= 2 and result.policy_misses == 30


def test_a_stale_operator_stream_holds_position_during_an_intervention(tmp_path):
    cfg = make_config(tmp_path / "ds", frames=20, fps=0, wire=_free_wire())
    cfg.robot = None
    daemon = RolloutDaemon(cfg, robot=PositionArm(), policy=StillPolicy(), link=DeadTeleop())
    [result] = daemon.run()
    np.testing.assert_allclose(_sent_actions(tmp_path / "ds"), 0.0)  # never the stale 90-degree command
    # Held, not driven by the operator: no frame is tagged as an intervention (labeling forces those
    # positive), and so the episode is not an intervention episode.
    assert result.intervention_frames == 0 and result.data_type == DataType.AUTO


class EstopAt(TeleopLink):
    """The operator's emergency-stop key, pressed on one frame."""

    def __init__(self, frame: int):
        self.frame = frame

    def start(self):
        pass

    def poll(self, view, wait):
        keys = {"success": 0, "failure": 0, "rerecord": 0, "estop": int(view.frame >= self.frame)}
        return TeleopSnapshot(pressed=False, action=None, keys=keys)

    def stop(self):
        pass


class ArmWithBus(PositionArm):
    class Bus:
        torque_disabled = False

        def disable_torque(self):
            self.torque_disabled = True

    def __init__(self):
        super().__init__()
        self.bus = self.Bus()


def test_emergency_stop_disables_torque_and_stops_the_daemon(tmp_path):
    cfg = make_config(tmp_path / "ds", frames=50, fps=0, wire=_free_wire())
    cfg.robot, cfg.episodes = None, 3
    arm = ArmWithBus()
    daemon = RolloutDaemon(cfg, robot=arm, policy=StillPolicy(), link=EstopAt(frame=7))
    results = daemon.run()
    assert arm.bus.torque_disabled
    assert len(results) == 1 and results[0].end_reason == "estop" and results[0].frames == 7
    assert results[0].data_type is None  # an emergency-stopped episode is not saved
