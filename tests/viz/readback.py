"""Read a .rrd back with Rerun's dataframe API, one entity's scalar column at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rerun.dataframe as rdf


def scalar_column(rrd: Path, entity: str, index: str = "frame") -> tuple[np.ndarray, np.ndarray]:
    """(times, values) of the rows where `entity` has a Scalars value; values are (rows, series)."""
    view = rdf.load_recording(str(rrd)).view(index=index, contents=f"/{entity}")
    table = view.select().read_all()
    column = f"/{entity}:Scalars:scalars"
    if column not in table.column_names:
        return np.zeros(0, np.int64), np.zeros((0, 1))
    values = table.column(column).to_pylist()
    times = table.column(index).to_pylist()
    rows = [i for i, v in enumerate(values) if v]  # None: no value; []: a Clear (a line break)
    times_out = np.array([_as_int(times[i]) for i in rows], dtype=np.int64)
    return times_out, np.array([values[i] for i in rows], dtype=np.float64).reshape(len(rows), -1)


def text_rows(rrd: Path, entity: str = "events", index: str = "frame") -> list[str]:
    table = rdf.load_recording(str(rrd)).view(index=index, contents=f"/{entity}").select().read_all()
    column = f"/{entity}:TextLog:text"
    if column not in table.column_names:
        return []
    return [t for cell in table.column(column).to_pylist() if cell for t in cell]


def _as_int(t: object) -> int:
    return int(t) if not hasattr(t, "value") else int(t.value)
