"""The rollout daemon's own hook (cfg.rerun): a lockstep sim run with a takeover, read back from .rrd."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from flywheel.viz import RerunConfig
from robots.sim import SimArmConfig
from teleop.pedals import Pedal, PedalReading
from teleop.sim_operator import SimOperator, SimOperatorConfig
from tests.netutil import free_address
from tests.viz.readback import scalar_column, text_rows

DOWN = range(15, 35)


class FramePedal(Pedal):
    def read(self, view):
        return PedalReading(pressed=view is not None and view.frame in DOWN)


@pytest.mark.timeout(20)
def test_daemon_streams_ticks_value_advantage_and_intervention_to_rrd(tmp_path: Path, monkeypatch):
    # The value model is a stand-in: the hook loads cfg.rerun.value_path through load_value_fn.
    monkeypatch.setattr(
        "flywheel.viz.logger.load_value_fn", lambda path, names: lambda obs, task: obs["hand_y.pos"] - 1.0
    )
    rrd = tmp_path / "daemon.rrd"
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3", seed=3),
        policy=PolicySourceConfig(baseline="random", version=7),
        dataset=DatasetConfig(root=tmp_path / "ds", repo_id="test/viz"),
        wire=WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address()),
        episodes=1,
        fps=0,
        episode_time_s=50 / 30,
        report_cadence=False,
        rerun=RerunConfig(save=rrd, value_path=tmp_path / "unused", value_every=1, value_n_step=5),
    )
    operator = SimOperator(SimOperatorConfig(observation_source="local"))
    daemon = RolloutDaemon(cfg, link=LocalTeleop(operator, FramePedal()))
    [result] = daemon.run()
    assert daemon.viz.dropped == 0 and daemon.viz.logged == result.frames == 50

    _, intervention = scalar_column(rrd, "control/intervention")
    assert np.flatnonzero(intervention[:, 0]).tolist() == list(DOWN)
    assert scalar_column(rrd, "action/operator/hand_x.vel")[0].tolist() == list(DOWN)
    _, version = scalar_column(rrd, "control/policy_version")
    assert set(version[intervention[:, 0] == 0, 0]) <= {7, 0}  # 0: the policy had no action ready
    value_frames, _ = scalar_column(rrd, "value")
    advantage_frames, _ = scalar_column(rrd, "advantage")
    assert len(value_frames) >= 5 and advantage_frames.tolist() == value_frames.tolist()
    events = text_rows(rrd)
    assert "episode 0 frame 15: operator takes over" in events
    assert any(e.startswith("episode 0 ends:") and "saved as intervention" in e for e in events)
