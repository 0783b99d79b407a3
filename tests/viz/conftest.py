"""A small labeled dataset (the colleague's synthetic recorder + `flywheel label`), built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.recap.labeling import LabelConfig, run_labeling
from tests.recap.synth import make_dataset, mixed_specs


@pytest.fixture(scope="session")
def labeled_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("viz_synth")
    source = make_dataset(base / "ds", mixed_specs(repeats=1))
    cfg = LabelConfig()
    cfg.dataset.root, cfg.output.root = source, base / "labeled"
    cfg.value.steps, cfg.value.batch_size = 60, 128  # labels need not be good here, only present
    run_labeling(cfg)
    return cfg.output.root
