"""`flywheel label` never deletes what it did not write, whatever --output.overwrite says.

The defect these pin: `--dataset.root=P/src --output.root=P --output.overwrite=true` used to write the
labeled copy to P after deleting everything in P, the source dataset included.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flywheel.cli import main
from flywheel.contracts.dataset import labels_path
from flywheel.recap.writer import check_output_root, is_labeled_output
from tests.recap.conftest import FAST_VALUE, tree_hashes
from tests.recap.synth import Spec, make_dataset, mixed_specs


def _label(source: Path, out: Path, overwrite: bool) -> int:
    return main(
        [
            "label",
            f"--dataset.root={source}",
            f"--output.root={out}",
            f"--output.overwrite={str(overwrite).lower()}",
            f"--value.steps={FAST_VALUE['steps']}",
            f"--value.batch_size={FAST_VALUE['batch_size']}",
        ]
    )


@pytest.fixture
def parent(tmp_path) -> Path:
    """P holding the source dataset P/src and a file of the user's beside it."""
    make_dataset(tmp_path / "P" / "src", mixed_specs(1))
    (tmp_path / "P" / "notes.txt").write_text("mine")
    return tmp_path / "P"


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_that_contains_the_source_is_refused(parent, overwrite):
    before = tree_hashes(parent)
    assert _label(parent / "src", parent, overwrite) == 2
    assert tree_hashes(parent) == before


def test_output_inside_the_source_is_refused(parent):
    before = tree_hashes(parent)
    assert _label(parent / "src", parent / "src" / "labeled", overwrite=True) == 2
    assert tree_hashes(parent) == before


def test_non_empty_sibling_that_is_not_a_labeled_output_is_kept(parent):
    sibling = parent / "other"
    make_dataset(sibling, [Spec("fast")])  # a dataset, but not one `flywheel label` wrote
    before = tree_hashes(parent)
    assert _label(parent / "src", sibling, overwrite=True) == 2
    assert tree_hashes(parent) == before


@pytest.mark.parametrize("target", ["P", "src", "labeled"])
def test_symlinked_output_is_refused(parent, tmp_path, target):
    destination = {"P": parent, "src": parent / "src", "labeled": tmp_path / "labeled"}[target]
    destination.mkdir(exist_ok=True)
    link = tmp_path / "link"
    link.symlink_to(destination, target_is_directory=True)
    before = tree_hashes(tmp_path)
    with pytest.raises(ValueError, match="symbolic link"):
        check_output_root(parent / "src", link, overwrite=True)
    assert _label(parent / "src", link, overwrite=True) == 2
    assert tree_hashes(tmp_path) == before and link.is_symlink()


def test_an_earlier_labeled_output_is_replaced_only_with_overwrite(parent, tmp_path):
    out = tmp_path / "labeled"
    assert _label(parent / "src", out, overwrite=False) == 0
    assert is_labeled_output(out)
    first = tree_hashes(out)
    assert _label(parent / "src", out, overwrite=False) == 2  # refused, and left as it was
    assert tree_hashes(out) == first
    assert _label(parent / "src", out, overwrite=True) == 0
    assert is_labeled_output(out)
    assert not list(tmp_path.glob(".labeled*"))  # no temporary folder left behind

    (out / "my_notes.txt").write_text("added by the user")  # now it is not only ours
    assert not is_labeled_output(out)
    before = tree_hashes(out)
    assert _label(parent / "src", out, overwrite=True) == 2
    assert tree_hashes(out) == before


def test_empty_output_folder_is_used(parent, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    check_output_root(parent / "src", out, overwrite=False)


def test_labels_file_alone_does_not_make_a_labeled_output(parent, tmp_path):
    """A dataset with a stray recap_labels.json but without the label columns is not ours."""
    fake = tmp_path / "fake"
    shutil.copytree(parent / "src", fake)
    labels_path(fake).write_text("{}")
    assert not is_labeled_output(fake)
    with pytest.raises(FileExistsError, match="not an earlier labeled output"):
        check_output_root(parent / "src", fake, overwrite=True)
