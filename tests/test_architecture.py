"""The import-linter contracts (pyproject.toml, docs/architecture.md) are kept, and they can fail:
a backwards import added to a copy of the tree breaks them with a message that names it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flywheel", "robots", "teleop", "trainer", "benchmarks")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy, not the editable install
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


def _copy_tree(dst: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_tree_keeps_every_contract(tmp_path):
    result = _lint_imports(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_backwards_import_breaks_the_layers_and_is_named(tmp_path):
    tree = _copy_tree(tmp_path)
    endpoints = tree / "flywheel/contracts/endpoints.py"
    source = endpoints.read_text()
    anchor = "from flywheel.contracts.security import Security\n"
    assert anchor in source
    backwards = "from flywheel.rollout.policy_source import ChunkPolicy\n"
    endpoints.write_text(source.replace(anchor, anchor + backwards))

    result = _lint_imports(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Layers: each imports only from the layers below it BROKEN" in result.stdout
    assert "flywheel.contracts is not allowed to import flywheel.rollout" in result.stdout
    assert "flywheel.contracts.endpoints -> flywheel.rollout.policy_source" in result.stdout
