"""Read a .rrd back, one entity's scalar or text column at a time.

rerun-sdk 0.33 has no `rerun.dataframe` any more (and `rerun.recording.load_recording` is deprecated
and has no `.view()`); its reader is `rerun.experimental.RrdReader`, which yields the recording's
chunks. `RrdReader.stream()` (not `.store()`) also reads a file whose stream was only flushed, not
disconnected (no footer yet). Rows of one entity come from several chunks: they are merged and put
in time order (then logging order: row ids increase), like the dataframe view's range query did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rerun.experimental import RrdReader

ROW_ID = "rerun.controls.RowId"


def _rows(rrd: Path, entity: str, component: str, index: str) -> list[tuple[object, list]]:
    """(time, cell) of every row of `entity` that has `component` on the `index` timeline."""
    stream = RrdReader(rrd).stream().filter(content=f"/{entity}", is_static=False, components=component)
    rows = []
    for chunk in stream:
        batch = chunk.to_record_batch()
        if index not in batch.schema.names or component not in batch.schema.names:
            continue
        columns = zip(
            batch.column(index).to_pylist(),
            batch.column(ROW_ID).to_pylist(),
            batch.column(component).to_pylist(),
            strict=True,
        )
        rows += [(_as_int(t), row_id, cell) for t, row_id, cell in columns if t is not None]
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(t, cell) for t, _, cell in rows]


def scalar_column(rrd: Path, entity: str, index: str = "frame") -> tuple[np.ndarray, np.ndarray]:
    """(times, values) of the rows where `entity` has a Scalars value; values are (rows, series)."""
    rows = [(t, v) for t, v in _rows(rrd, entity, "Scalars:scalars", index) if v]  # a Clear has none
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 1))
    times = np.array([t for t, _ in rows], dtype=np.int64)
    return times, np.array([v for _, v in rows], dtype=np.float64).reshape(len(rows), -1)


def text_rows(rrd: Path, entity: str = "events", index: str = "frame") -> list[str]:
    return [t for _, cell in _rows(rrd, entity, "TextLog:text", index) if cell for t in cell]


def _as_int(t: object) -> int:
    return int(t) if not hasattr(t, "value") else int(t.value)
