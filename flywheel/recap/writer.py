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
meta/info.json, meta/stats.json and the per-episode stats in meta/episodes are extended.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lerobot.datasets.compute_stats import aggregate_stats, compute_episode_stats
from lerobot.datasets.utils import get_hf_features_from_features, serialize_dict

from flywheel.recap.source import Source

LABEL_FEATURES: dict[str, dict] = {
    "value": {"dtype": "float32", "shape": (1,), "names": None},
    "advantage": {"dtype": "float32", "shape": (1,), "names": None},
    "advantage_positive": {"dtype": "bool", "shape": (1,), "names": None},
    "observation.advantage_positive": {"dtype": "float32", "shape": (1,), "names": None},
}
LABELS_FILE = "meta/recap_labels.json"


def features_for(columns: dict[str, np.ndarray]) -> dict[str, dict]:
    """LABEL_FEATURES, plus float32 (1,) for any extra column (e.g. IQL's `awr_weight`)."""
    extra = {"dtype": "float32", "shape": (1,), "names": None}
    return {key: LABEL_FEATURES.get(key, extra) for key in columns}


def label_columns(values: np.ndarray, advantages: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "value": values.astype(np.float32),
        "advantage": advantages.astype(np.float32),
        "advantage_positive": positive.astype(bool),
        "observation.advantage_positive": positive.astype(np.float32),
    }


def check_output_root(source_root: Path, out: Path, overwrite: bool) -> None:
    if out.resolve() == source_root.resolve() or source_root.resolve() in out.resolve().parents:
        raise ValueError(f"output.root: {out} must not be the source dataset or inside it")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output.root: {out} exists and is not empty (--output.overwrite=true)")


def write_labeled(
    source: Source, out: Path, columns: dict[str, np.ndarray], report: dict, extra_dirs: dict[str, Path]
) -> None:
    """Copy `source` to `out` with the label columns; `extra_dirs` are copied under `out` too."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source.root, tmp, ignore=shutil.ignore_patterns("quarantine"))
        features = _extend_info(tmp, source.info, features_for(columns))
        hf_schema = get_hf_features_from_features(features).arrow_schema
        for path in sorted((tmp / "data").glob("*/*.parquet")):
            _add_columns(path, columns, hf_schema)
        episode_stats = _episode_stats(source, columns)
        _extend_episode_files(tmp, episode_stats)
        _extend_stats(tmp, episode_stats)
        (tmp / LABELS_FILE).write_text(json.dumps(report, indent=2, default=float))
        for name, directory in extra_dirs.items():
            shutil.copytree(directory, tmp / name)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extend_info(root: Path, info: dict, new_features: dict[str, dict]) -> dict:
    info = json.loads(json.dumps(info))
    info["features"].update({k: {**v, "shape": list(v["shape"])} for k, v in new_features.items()})
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    # LeRobot compares shapes as tuples when it builds the HF features.
    return {k: {**v, "shape": tuple(v["shape"])} for k, v in info["features"].items()}


def _add_columns(path: Path, columns: dict[str, np.ndarray], hf_schema: pa.Schema) -> None:
    table = pq.read_table(path)
    rows = table.column("index").to_numpy()
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


def _extend_episode_files(root: Path, episode_stats: list[dict]) -> None:
    for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        table = pq.read_table(path)
        episodes = table.column("episode_index").to_pylist()
        for key in episode_stats[0]:
            for stat in episode_stats[0][key]:
                values = [np.asarray(episode_stats[e][key][stat]).reshape(-1).tolist() for e in episodes]
                table = table.append_column(f"stats/{key}/{stat}", pa.array(values))
        pq.write_table(table, path)


def _extend_stats(root: Path, episode_stats: list[dict]) -> None:
    path = root / "meta" / "stats.json"
    stats = json.loads(path.read_text()) if path.exists() else {}
    stats.update(serialize_dict(aggregate_stats(episode_stats)))
    path.write_text(json.dumps(stats, indent=4))
