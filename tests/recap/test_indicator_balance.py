"""Sampling weights giving the positive-labeled frames a fixed share (flywheel/recap/indicator_balance.py)."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.recap.indicator_balance import indicator_balanced_weights, labels_of


def test_the_positive_frames_get_their_share_and_keep_the_base_proportions():
    positive = np.array([True, True, False, False, False, False])
    base = np.array([1.0, 3.0, 1.0, 1.0, 2.0, 0.0])  # the last frame held out
    w = indicator_balanced_weights(positive, 0.7, base)
    assert w.sum() == pytest.approx(1.0)
    assert w[positive].sum() == pytest.approx(0.7)
    assert w[1] == pytest.approx(3 * w[0]) and w[4] == pytest.approx(2 * w[2]) and w[5] == 0.0
    uniform = indicator_balanced_weights(positive, 0.5)
    np.testing.assert_allclose(uniform, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])


def test_a_missing_class_leaves_the_mass_to_the_other_and_bad_input_is_refused():
    np.testing.assert_allclose(indicator_balanced_weights(np.ones(4, bool), 0.3), [0.25] * 4)
    np.testing.assert_allclose(indicator_balanced_weights(np.zeros(2, bool), 0.3), [0.5, 0.5])
    with pytest.raises(ValueError, match="positive_share"):
        indicator_balanced_weights(np.ones(2, bool), 1.5)
    with pytest.raises(ValueError, match="base"):
        indicator_balanced_weights(np.ones(2, bool), 0.5, np.ones(3))


def test_labels_are_read_by_frame_index(tmp_path: Path):
    folder = tmp_path / "data" / "chunk-000"
    folder.mkdir(parents=True)
    files = (("file-001", [3, 4], [[True], [False]]), ("file-000", [0, 1, 2], [[False], [True], [True]]))
    for name, index, labels in files:
        table = pa.table({"index": index, "advantage_positive": labels})
        pq.write_table(table, folder / f"{name}.parquet")
    np.testing.assert_array_equal(labels_of(tmp_path), [False, True, True, True, False])
