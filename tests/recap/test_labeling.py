"""flywheel label on a synthetic dataset: fractions, forced positives, the untouched source, transport."""

import json

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.processor.converters import batch_to_transition, transition_to_batch

from flywheel.contracts.dataset import FrameType, labels_path
from flywheel.recap.source import load_source
from tests.recap.conftest import tree_hashes

MODES = ("global", "progress")


@pytest.mark.parametrize("mode", MODES)
def test_positive_fraction_per_task_is_on_target(labeled, synth_root, mode):
    _, labels = labeled[mode]
    source = load_source(synth_root)
    tasks = source.task_of_frames()
    target = (
        labels.report["config"]["threshold"]["positive_fraction"] or {"global": 0.3, "progress": 0.1}[mode]
    )
    for task in set(tasks.tolist()):
        free = (tasks == task) & ~labels.forced
        assert abs(labels.positive[free].mean() - target) < 0.02, (task, labels.positive[free].mean())


@pytest.mark.parametrize("mode", MODES)
def test_intervention_frames_are_all_positive(labeled, synth_root, mode):
    _, labels = labeled[mode]
    source = load_source(synth_root)
    interventions = source.frame_data_type_ids() == FrameType.INTERVENTION
    assert interventions.sum() > 0
    assert labels.positive[interventions].all()


def test_source_is_byte_identical_after_labeling(labeled, synth_root, synth_hashes):
    assert tree_hashes(synth_root) == synth_hashes


def test_labels_and_report_are_written(labeled):
    out, labels = labeled["progress"]
    report = json.loads(labels_path(out).read_text())
    assert report["thresholds"]["mode"] == "progress"
    assert len(report["thresholds"]["per_task"]) == 2
    # The synthetic states reveal each episode's speed, so V predicts returns and advantages carry
    # little signal here: only check that the report is there (measured on the sim: docs/recap.md).
    assert set(report["label_quality"]) >= {"good_positive", "bad_positive", "auc"}
    assert (out / "meta" / "recap_value" / "model.safetensors").exists()
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["observation.advantage_positive"]["mean"][0] == pytest.approx(
        labels.positive.mean(), abs=1e-6
    )


def test_labeled_dataset_loads_and_the_label_survives_the_stock_collate(labeled, synth_root):
    out, labels = labeled["global"]
    dataset = LeRobotDataset("local/labeled", root=out)
    source = LeRobotDataset("local/synth", root=synth_root)
    assert dataset.num_frames == source.num_frames
    assert dataset[5]["observation.state"].tolist() == source[5]["observation.state"].tolist()
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False)))
    for key in ("observation.advantage_positive", "advantage_positive", "value", "advantage"):
        assert key in batch
    np.testing.assert_array_equal(batch["observation.advantage_positive"].numpy(), labels.positive[:64])
    # LeRobot's preprocessor converts batch -> transition -> batch: only observation.* labels survive it.
    after = transition_to_batch(batch_to_transition(batch))
    assert "observation.advantage_positive" in after
    assert "advantage_positive" not in after
