"""Labeling with the value function looking at the cameras (tiny preset's CNN)."""

import json

import numpy as np

from flywheel.recap.labeling import run_labeling
from flywheel.recap.source import load_source
from tests.recap.conftest import label_config
from tests.recap.synth import CAMERA, Spec, make_dataset


def test_label_with_images(tmp_path):
    specs = [Spec("fast"), Spec("slow", operator="sim_operator:slow"), Spec("failed")] * 2
    root = make_dataset(tmp_path / "cams", specs, camera=True)
    source = load_source(root, with_images=True)
    images = source.frames.images[CAMERA]
    assert images.shape == (len(source.frames), 3, 16, 16) and images.dtype == np.uint8
    cfg = label_config(root, tmp_path / "out", value={"use_images": True, "steps": 50, "cross_fit_folds": 1})
    labels = run_labeling(cfg)
    assert np.isfinite(labels.values).all()
    saved = json.loads((tmp_path / "out" / "meta" / "recap_value" / "config.json").read_text())
    assert CAMERA in saved["input_features"]
