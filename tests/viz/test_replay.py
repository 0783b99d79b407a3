"""`flywheel view` replays of a labeled dataset, the trainer's relabeled episodes, the value model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rerun as rr

from flywheel.viz import RerunConfig, ViewConfig, ViewDatasetConfig, log_labeled_episode, view_main
from flywheel.viz.value_monitor import ValueMonitor, load_value_fn, thresholds_for
from tests.viz.readback import scalar_column, text_rows


def frames_of(root: Path) -> pd.DataFrame:
    files = sorted((root / "data").glob("*/*.parquet"))
    table = pd.concat([pq.read_table(f).to_pandas() for f in files]).sort_values("index")
    return table.reset_index(drop=True)


@pytest.mark.timeout(20)
def test_replay_of_a_labeled_dataset_has_value_advantage_positive_and_intervention(labeled_root, tmp_path):
    rrd = tmp_path / "replay.rrd"
    cfg = ViewConfig(ViewDatasetConfig(root=labeled_root), RerunConfig(save=rrd))
    assert view_main(cfg) == 0
    frames = frames_of(labeled_root)
    index = frames["index"].to_numpy()

    at, values = scalar_column(rrd, "value")
    assert at.tolist() == index.tolist()
    np.testing.assert_allclose(values[:, 0], np.stack(frames["value"]).ravel(), rtol=1e-6)
    _, advantages = scalar_column(rrd, "advantage")
    np.testing.assert_allclose(advantages[:, 0], np.stack(frames["advantage"]).ravel(), rtol=1e-6)
    positive = np.stack(frames["advantage_positive"]).ravel().astype(bool)
    assert scalar_column(rrd, "advantage/positive")[0].tolist() == index[positive].tolist()
    assert scalar_column(rrd, "advantage/negative")[0].tolist() == index[~positive].tolist()
    threshold_at, _ = scalar_column(rrd, "advantage/threshold")
    assert threshold_at.tolist() == index.tolist()  # the labeling's threshold, per frame

    intervention = np.stack(frames["intervention"]).ravel().astype(bool)
    _, logged = scalar_column(rrd, "control/intervention")
    assert logged[:, 0].astype(bool).tolist() == intervention.tolist()
    assert scalar_column(rrd, "value/intervention")[0].tolist() == index[intervention].tolist()
    operator_at, _ = scalar_column(rrd, "action/operator/a0")
    assert operator_at.tolist() == index[intervention].tolist()
    events = text_rows(rrd)
    # synth: one intervention episode per task with the operator on frames 30..59 of it
    assert sum("operator in control" in e and "(30 ticks)" in e for e in events) == 2


@pytest.mark.timeout(20)
def test_view_refuses_a_folder_without_a_dataset(tmp_path):
    cfg = ViewConfig(ViewDatasetConfig(root=tmp_path / "nothing"), RerunConfig(save=tmp_path / "x.rrd"))
    assert view_main(cfg) == 2


@pytest.mark.timeout(20)
def test_the_trainer_logs_a_relabeled_episode_into_a_recording(tmp_path):
    rrd = tmp_path / "labels.rrd"
    stream = rr.RecordingStream("flywheel", recording_id="run-1")
    stream.save(rrd)
    values = np.linspace(-0.9, -0.1, 40)
    advantages = np.sin(np.arange(40) / 5.0) * 0.05
    positive = advantages > 0.02
    log_labeled_episode(stream, 7, values, advantages, positive, 0.02, start_frame=1000)
    stream.flush()
    stream.disconnect()
    at, logged = scalar_column(rrd, "labels/value", index="dataset_index")
    assert at.tolist() == list(range(1000, 1040))
    np.testing.assert_allclose(logged[:, 0], values)
    assert (
        scalar_column(rrd, "labels/advantage/positive", "dataset_index")[0].tolist()
        == (1000 + np.flatnonzero(positive)).tolist()
    )
    _, threshold = scalar_column(rrd, "labels/advantage/threshold", "dataset_index")
    assert set(threshold[:, 0]) == {0.02}
    assert any("episode 7 relabeled" in t for t in text_rows(rrd, "labels/events", "dataset_index"))


@pytest.mark.timeout(20)
def test_the_labeling_value_model_gives_v_and_the_threshold_live(labeled_root, tmp_path):
    value_path = labeled_root / "meta" / "recap_value"
    names = json.loads((labeled_root / "meta" / "info.json").read_text())["features"]["observation.state"][
        "names"
    ]
    value = load_value_fn(value_path, names)
    v = value({"x": 0.5, "dx": 0.05, "task": 0.0, "noise": 0.0}, "reach the goal")
    assert -1.0 <= v <= 0.0
    thresholds = thresholds_for(value_path)
    assert thresholds is not None and thresholds("reach the goal", v) is not None

    rrd = tmp_path / "monitor.rrd"
    stream = rr.RecordingStream("flywheel")
    stream.save(rrd)
    monitor = ValueMonitor(stream, value, n_step=2, episode_steps=20, thresholds=thresholds).start()
    for frame in range(6):
        observation = {"x": 0.05 * frame, "dx": 0.05, "task": 0.0, "noise": 0.0}
        monitor.offer(0, frame, 0.0, observation, "reach the goal")
        time.sleep(0.05)  # let the monitor take each offer (newest-wins would skip some otherwise)
    monitor.end_episode(0, True, 5)
    monitor.close()
    stream.flush()
    stream.disconnect()
    assert monitor.errors == 0 and monitor.evaluations == 6
    assert scalar_column(rrd, "advantage")[0].tolist() == list(range(6))
    marked = len(scalar_column(rrd, "advantage/positive")[0]) + len(
        scalar_column(rrd, "advantage/negative")[0]
    )
    assert marked == 6
