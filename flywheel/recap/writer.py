"""Write the labeled dataset: a copy of the source with four per-frame features added.

    value                           float32 (1,)  V(o_t), normalized return (IQL: discounted return)
    advantage                       float32 (1,)  A_t
    advantage_positive              bool    (1,)  the binary RECAP indicator
    observation.advantage_positive  float32 (1,)  the same indicator as 1.0 / 0.0: observation.* keys
                                                  survive LeRobot's preprocessor, so this is the one
                                                  that reaches policy.forward under lerobot-train

Everything is written into a temporary sibling directory and renamed into place at the end, so a
failure leaves no output; the source is only read. Data files are rewritten with the new columns
(images, when stored in parquet, pass through as bytes); all other files are copied, then
meta/info.json, meta/stats.json and the per-episode stats in meta/episodes are extended. An existing
output is replaced only when it is recognisably an earlier labeled output (`is_labeled_output`).
The features and the labels file are part of the dataset contract (flywheel/contracts/dataset.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lerobot.datasets.compute_stats import aggregate_stats, compute_episode_stats
from lerobot.datasets.feature_utils import get_hf_features_from_features
from lerobot.datasets.utils import serialize_dict

from flywheel.contracts.dataset import (
    ADVANTAGE,
    ADVANTAGE_POSITIVE,
    EPISODE_INDEX,
    FLYWHEEL_FRAME_FEATURES,
    INDEX,
    LABEL_FEATURES,
    LABELS_FILE,
    OBS_ADVANTAGE_POSITIVE,
    QUARANTINE_DIR,
    STATS_FILE,
    VALUE,
    data_files,
    episode_files,
    info_path,
    labels_path,
)
from flywheel.recap.source import Source


def features_for(columns: dict[str, np.ndarray]) -> dict[str, dict]:
    """LABEL_FEATURES (or, for a flywheel field derived from a stock dataset, FLYWHEEL_FRAME_FEATURES),
    plus float32 (1,) for any extra column (e.g. IQL's `awr_weight`)."""
    extra = {"dtype": "float32", "shape": (1,), "names": None}
    known = {**FLYWHEEL_FRAME_FEATURES, **LABEL_FEATURES}
    return {key: known.get(key, extra) for key in columns}


def label_columns(values: np.ndarray, advantages: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    return {
        VALUE: values.astype(np.float32),
        ADVANTAGE: advantages.astype(np.float32),
        ADVANTAGE_POSITIVE: positive.astype(bool),
        OBS_ADVANTAGE_POSITIVE: positive.astype(np.float32),
    }


# What a labeled output holds at its top level: a LeRobot dataset's folders, nothing else.
DATASET_ENTRIES = frozenset({"meta", "data", "videos", "images"})


def is_labeled_output(root: Path) -> bool:
    """An earlier `flywheel label` output: it has the labels report and the label features, and
    nothing at its top level but a dataset's own folders (a folder someone added files to, or
    recorded into, is no longer only ours to replace)."""
    info = info_path(root)
    if not labels_path(root).is_file() or not info.is_file():
        return False
    try:
        features = json.loads(info.read_text()).get("features", {})
    except (OSError, ValueError):
        return False
    entries = {p.name for p in root.iterdir()}
    return set(LABEL_FEATURES) <= set(features) and entries <= DATASET_ENTRIES


def check_output_root(source_root: Path, out: Path, overwrite: bool) -> None:
    """Refuse any output that could cost data: the source, a folder inside it or holding it, a
    symbolic link, or a non-empty folder that is not an earlier labeled output."""
    out = Path(out)
    if out.is_symlink():
        raise ValueError(f"output.root: {out} is a symbolic link (to {out.resolve()}); pass a real folder")
    source, target = Path(source_root).resolve(), out.resolve()
    if target == source or source in target.parents:
        raise ValueError(f"output.root: {out} must not be the source dataset {source_root} or inside it")
    if target in source.parents:
        raise ValueError(f"output.root: {out} contains the source dataset {source_root}; choose another")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output.root: {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_labeled_output(out):
        raise FileExistsError(
            f"output.root: {out} is not empty and is not an earlier labeled output "
            f"(no {LABELS_FILE}, or other files beside the dataset); nothing there is replaced"
        )
    if not overwrite:
        raise FileExistsError(
            f"output.root: {out} holds an earlier labeled output; --output.overwrite=true replaces it"
        )


def write_labeled(
    source: Source, out: Path, columns: dict[str, np.ndarray], report: dict, extra_dirs: dict[str, Path]
) -> None:
    """Copy `source` to `out` with the label columns; `extra_dirs` are copied under `out` too.
    The flywheel fields a stock LeRobot source lacks, derived in memory by `load_source`
    (`source.derived_frames`, `source.derived_episodes`), are written into the copy too, so it is
    a complete flywheel dataset (docs/dataset.md, "Datasets from stock LeRobot tools").

    The caller has checked `out` with `check_output_root`."""
    out = Path(out)
    columns = {**source.derived_frames, **columns}
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, uniquely named sibling: nothing that existed before is ever reused or removed.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent)) / "dataset"
    try:
        shutil.copytree(source.root, tmp, ignore=shutil.ignore_patterns(QUARANTINE_DIR))
        features = _extend_info(tmp, source.info, features_for(columns))
        hf_schema = get_hf_features_from_features(features).arrow_schema
        for path in data_files(tmp):
            _add_columns(path, columns, hf_schema)
        episode_stats = _episode_stats(source, columns)
        _extend_episode_files(tmp, episode_stats, source.derived_episodes)
        _extend_stats(tmp, episode_stats)
        labels_path(tmp).write_text(json.dumps(report, indent=2, default=float))
        for name, directory in extra_dirs.items():
            shutil.copytree(directory, tmp / name)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _move_into_place(new: Path, out: Path) -> None:
    """Rename `new` to `out`. An earlier labeled output there is moved aside first and removed only
    once the new one is in place, so a failure never leaves neither."""
    if not out.exists():
        new.rename(out)
        return
    if any(out.iterdir()) and not is_labeled_output(out):  # checked before; re-checked before removing
        raise FileExistsError(f"output.root: {out} changed while labeling and is no longer ours to replace")
    old = new.parent / "replaced"
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise


def _extend_info(root: Path, info: dict, new_features: dict[str, dict]) -> dict:
    info = json.loads(json.dumps(info))
    info["features"].update({k: {**v, "shape": list(v["shape"])} for k, v in new_features.items()})
    info_path(root).write_text(json.dumps(info, indent=4))
    # LeRobot compares shapes as tuples when it builds the HF features.
    return {k: {**v, "shape": tuple(v["shape"])} for k, v in info["features"].items()}


def _add_columns(path: Path, columns: dict[str, np.ndarray], hf_schema: pa.Schema) -> None:
    table = pq.read_table(path)
    rows = table.column(INDEX).to_numpy()
    for key, values in columns.items():
        table = table.append_column(key, pa.array(values[rows]))
    # Same column order and HF metadata as LeRobot would write for the extended features.
    table = table.select([f.name for f in hf_schema]).cast(hf_schema)
    pq.write_table(table, path)


def _episode_stats(source: Source, columns: dict[str, np.ndarray]) -> list[dict]:
    stats = []
    for start, length in zip(source.episodes.start, source.episodes.length, strict=True):
        episode = {k: v[start : start + length].reshape(-1, 1) for k, v in columns.items()}
        stats.append(compute_episode_stats(episode, features_for(columns)))
    return stats


def _extend_episode_files(root: Path, episode_stats: list[dict], episode_columns: dict[str, list]) -> None:
    """Add the per-episode stats of the new features, and `episode_columns` (one value per episode,
    in episode order: episode indices are 0..E-1, checked by `load_source`)."""
    for path in episode_files(root):
        table = pq.read_table(path)
        episodes = table.column(EPISODE_INDEX).to_pylist()
        for name, values in episode_columns.items():
            table = table.append_column(name, pa.array([values[e] for e in episodes]))
        for key in episode_stats[0]:
            for stat in episode_stats[0][key]:
                values = [np.asarray(episode_stats[e][key][stat]).reshape(-1).tolist() for e in episodes]
                table = table.append_column(f"stats/{key}/{stat}", pa.array(values))
        pq.write_table(table, path)


def _extend_stats(root: Path, episode_stats: list[dict]) -> None:
    path = root / STATS_FILE
    stats = json.loads(path.read_text()) if path.exists() else {}
    stats.update(serialize_dict(aggregate_stats(episode_stats)))
    path.write_text(json.dumps(stats, indent=4))
