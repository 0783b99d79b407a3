"""The live logger on the real sim: a run recorded to .rrd and read back, and its cost per tick."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rerun as rr

from flywheel.contracts.ticks import EpisodeEnd, Tick
from flywheel.viz import RerunConfig, RerunLogger
from flywheel.viz.sinks import Recording, open_recording
from tests.viz.readback import scalar_column, text_rows
from tests.viz.simrun import POLICY_VERSION, drive, sim_arm

N_STEP, T_MAX = 10, 100
TAKEOVER = range(20, 40)


def hand_value(observation, task) -> float:
    """A stand-in V(s) the test can recompute from the logged state."""
    return float(observation["hand_x.pos"]) - 0.5


@pytest.mark.timeout(20)
def test_sim_run_recorded_to_rrd_reads_back_value_advantage_and_intervention(tmp_path: Path):
    rrd = tmp_path / "run.rrd"
    cfg = RerunConfig(save=rrd, value_every=1, value_n_step=N_STEP, value_episode_steps=T_MAX)
    arm = sim_arm()
    logger = RerunLogger.from_config(cfg, arm.observation_features, list(arm.action_features), hand_value)
    try:
        # 10 ms a tick (a third of a real one) leaves the value thread time to evaluate even on a
        # loaded machine; unpaced, the 60 ticks took a few ms and it sometimes evaluated < 10 of them.
        seen = drive(logger, arm, frames=60, takeover=TAKEOVER, on_tick=lambda: time.sleep(0.01))
    finally:
        logger.close()
        arm.disconnect()
    assert logger.dropped == 0 and logger.logged == 60

    frames, intervention = scalar_column(rrd, "control/intervention")
    assert frames.tolist() == list(range(60))
    assert np.flatnonzero(intervention[:, 0]).tolist() == list(TAKEOVER)
    _, version = scalar_column(rrd, "control/policy_version")
    assert set(version[intervention[:, 0] == 0, 0]) == {POLICY_VERSION}
    operator_frames, _ = scalar_column(rrd, "action/operator/hand_x.vel")
    policy_frames, _ = scalar_column(rrd, "action/policy/hand_x.vel")
    assert operator_frames.tolist() == list(TAKEOVER)
    assert set(policy_frames.tolist()) == set(range(60)) - set(TAKEOVER)

    # V(s) was evaluated on the observation of the frame it is logged at.
    value_frames, values = scalar_column(rrd, "value")
    assert len(value_frames) >= 10  # asynchronous: the newest observation wins, some are skipped
    expected = [hand_value(seen[f], "") for f in value_frames]
    np.testing.assert_allclose(values[:, 0], expected, atol=1e-6)

    # A_f = -(t - f)/T_max + V(t) - V(f), t the first evaluation >= f + N; after the end, the terminal.
    advantage_frames, advantages = scalar_column(rrd, "advantage")
    assert advantage_frames.tolist() == value_frames.tolist()  # every evaluated frame gets one
    v = dict(zip(value_frames.tolist(), values[:, 0], strict=True))
    for f, a in zip(advantage_frames.tolist(), advantages[:, 0], strict=True):
        later = [t for t in value_frames if t >= f + N_STEP]
        if later:
            t = int(later[0])
            assert a == pytest.approx(-(t - f) / T_MAX + v[t] - v[f], abs=1e-6)
        else:  # failed (timeout): -1 per step to the end, then -C_fail = -0.5 T_max, no bootstrap
            assert a == pytest.approx((-(59 - f) - 0.5 * T_MAX) / T_MAX - v[f], abs=1e-6)

    events = text_rows(rrd)
    assert "episode 0 frame 20: operator takes over" in events
    assert "episode 0 frame 40: policy resumes" in events
    assert any(e.startswith("episode 0 ends: failure (timeout)") for e in events)


class _NoSinkRecording(Recording):
    def close(self, timeout_s: float = 5.0) -> None:
        self.stream.disconnect()


def _unsinked_logger(queue_size: int, start: bool) -> RerunLogger:
    import rerun as rr

    stream = rr.RecordingStream("flywheel-test")
    stream.set_sinks()  # no sink at all: nothing leaves the process
    return RerunLogger(_NoSinkRecording(stream), ["x"], [], ["a"], queue_size=queue_size, start=start)


@pytest.mark.timeout(20)
def test_a_full_queue_drops_ticks_without_blocking_and_keeps_episode_events():
    logger = _unsinked_logger(queue_size=8, start=False)  # nobody drains: the queue fills up
    logger.start_episode(0, "task")
    slowest = 0.0
    for frame in range(100):
        t0 = time.perf_counter()
        logger.tick(Tick(0, frame, "", {"x": 0.0}, np.zeros(1, np.float32), "policy", False, 1, False))
        slowest = max(slowest, time.perf_counter() - t0)
    logger.end_episode(EpisodeEnd(0, True, "success", "auto"))
    assert logger.dropped == 100 - 7  # the start event holds one of the 8 places
    assert slowest < 0.005
    logger.start()
    logger.close()
    assert logger.logged == 7 and logger.errors == 0


@pytest.mark.timeout(20)
def test_at_30_hz_with_camera_images_nothing_is_dropped_and_a_tick_costs_microseconds():
    import rerun as rr

    stream = rr.RecordingStream("flywheel-test")
    stream.set_sinks()
    logger = RerunLogger(_NoSinkRecording(stream), ["hand_x.pos", "hand_y.pos"], ["wrist"], ["a", "b"])
    images = [np.full((480, 640, 3), i, np.uint8) for i in range(4)]
    costs = []
    logger.start_episode(0, "task")
    next_tick = time.perf_counter()
    for frame in range(60):  # 2 s at 30 Hz
        observation = {"hand_x.pos": 0.1 * frame, "hand_y.pos": 0.0, "wrist": images[frame % 4]}
        t0 = time.perf_counter()
        logger.tick(Tick(0, frame, "", observation, np.zeros(2, np.float32), "policy", False, 1, False))
        costs.append(time.perf_counter() - t0)
        next_tick += 1 / 30
        time.sleep(max(0.0, next_tick - time.perf_counter()))
    logger.end_episode(EpisodeEnd(0, False, "timeout", "auto"))
    logger.close()
    assert logger.dropped == 0 and logger.logged == 60
    assert np.percentile(costs, 99) < 0.001


def test_rerun_save_never_overwrites_an_existing_recording(tmp_path):
    """A restarted daemon or the trainer's next iteration with the same --rerun.save keeps the first
    file and records beside it."""
    path = tmp_path / "run.rrd"
    path.write_bytes(b"an earlier recording")
    recording = open_recording(RerunConfig(save=path))
    recording.stream.log("x", rr.Scalars(1.0))
    recording.close()
    assert path.read_bytes() == b"an earlier recording"
    assert recording.path == tmp_path / "run-2.rrd" and recording.path.stat().st_size > 0
