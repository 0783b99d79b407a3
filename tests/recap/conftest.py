"""Session fixtures: one synthetic dataset, labeled once per threshold mode (labeling is the slow part)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from flywheel.recap.labeling import LabelConfig, Labels, run_labeling
from tests.recap.synth import make_dataset, mixed_specs

FAST_VALUE = {"steps": 300, "batch_size": 128}


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def label_config(source: Path, out: Path, **sections) -> LabelConfig:
    cfg = LabelConfig()
    cfg.dataset.root, cfg.output.root = source, out
    cfg.value.steps, cfg.value.batch_size = FAST_VALUE["steps"], FAST_VALUE["batch_size"]
    cfg.iql.steps = 300
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    cfg.__post_init__()
    return cfg


@pytest.fixture(autouse=True)
def _one_torch_thread_everywhere(one_torch_thread):
    """Every RECAP test runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "ds", mixed_specs())


@pytest.fixture(scope="session")
def synth_hashes(synth_root) -> dict[str, str]:
    return tree_hashes(synth_root)


@pytest.fixture(scope="session")
def labeled(synth_root, synth_hashes, tmp_path_factory) -> dict[str, tuple[Path, Labels]]:
    """{"global": (out_root, labels), "progress": (...)} on the same synthetic source."""
    results = {}
    for mode in ("global", "progress"):
        out = tmp_path_factory.mktemp(mode) / "labeled"
        results[mode] = (out, run_labeling(label_config(synth_root, out, threshold={"mode": mode})))
    return results
