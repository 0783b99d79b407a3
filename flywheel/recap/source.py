"""Read a flywheel dataset into arrays for labeling, refusing what cannot be labeled.

Reads the parquet files directly (not through LeRobotDataset) so that a malformed dataset fails
with a message naming the field and the episode instead of deep inside LeRobot, and before any
output is written.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from flywheel.contracts.dataset import (
    ACTION,
    DATA_TYPE,
    EPISODE_INDEX,
    FRAME_INDEX,
    FRAME_TYPE_OF_DATA_TYPE,
    INDEX,
    INFO_FILE,
    INTERVENTION,
    OPERATOR,
    STATE,
    SUCCESS,
    data_files,
    episode_files,
    frame_types,
    info_path,
    iter_frame_tables,
    read_episode_table,
    read_frame_table,
    read_json_retrying,
)


class LabelInputError(ValueError):
    """The dataset cannot be labeled; the message names the field and the episode."""


@dataclass
class Episodes:
    """One entry per episode, ordered by episode_index."""

    index: np.ndarray  # int64 episode_index
    length: np.ndarray  # int64
    start: np.ndarray  # int64 dataset_from_index
    task: list[str]
    data_type: list[str]
    success: np.ndarray  # bool
    operator: list[str]

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class Frames:
    """Per-frame arrays in global `index` order."""

    state: np.ndarray  # (F, D) float32
    action: np.ndarray  # (F, A) float32
    episode: np.ndarray  # (F,) position of the frame's episode in Episodes (0..E-1)
    frame_index: np.ndarray  # (F,)
    intervention: np.ndarray  # (F,) bool
    images: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (F, 3, H, W) uint8

    def __len__(self) -> int:
        return len(self.episode)


@dataclass
class Source:
    root: Path
    info: dict
    episodes: Episodes
    frames: Frames

    def task_of_frames(self) -> np.ndarray:
        """Per-frame task string."""
        return np.asarray(self.episodes.task, dtype=object)[self.frames.episode]

    def frame_data_type_ids(self) -> np.ndarray:
        """Per-frame FrameType ids: DEMO, AUTO, INTERVENTION (the operator's frames inside a policy
        episode); see flywheel.contracts.dataset.frame_types."""
        return frame_types(self.episodes.data_type, self.frames.episode, self.frames.intervention)


def camera_keys(info: dict) -> list[str]:
    return sorted(k for k, ft in info["features"].items() if ft["dtype"] in ("image", "video"))


def load_source(root: Path, with_images: bool = False) -> Source:
    """`with_images` also decodes every camera frame (parquet-stored images only)."""
    root = Path(root)
    info = _read_info(root)
    episodes = _load_episodes(root)
    frames = _load_frames(root, episodes)
    if with_images:
        frames.images = {key: _load_images(root, info, key) for key in camera_keys(info)}
    return Source(root=root, info=info, episodes=episodes, frames=frames)


def check_dataset(root: Path) -> dict:
    """The checks `load_source` makes before it reads any frame (info.json's features, then every
    episode's metadata), for a dataset that may still be recorded into: an episode metadata file
    without its footer yet (the recorder is writing it now) is left out, as `snapshot` leaves it out.
    Returns info.json."""
    root = Path(root)
    info = _read_info(root)
    try:
        _load_episodes(root, skip_unfinished=True)
    except LabelInputError as e:  # its messages name the episode; say which dataset too
        raise LabelInputError(f"{e} in the dataset at {root}") from e
    return info


def _read_info(root: Path) -> dict:
    path = info_path(root)
    if not path.exists():
        raise LabelInputError(f"{INFO_FILE}: {root} holds no LeRobot dataset")
    info = read_json_retrying(path)  # the recorder rewrites it in place on every save
    for key in (STATE, ACTION, INTERVENTION):
        if key not in info["features"]:
            raise LabelInputError(f"features.{key}: missing from {path} (episode: all)")
    return info


def _load_episodes(root: Path, skip_unfinished: bool = False) -> Episodes:
    files = episode_files(root)
    if not files:
        raise LabelInputError(f"meta/episodes: no episode metadata under {root}")
    table = read_episode_table(files, skip_unfinished=skip_unfinished)
    if table is None:
        raise LabelInputError(f"meta/episodes: no complete episode metadata under {root}")
    _check_episode_columns(table)
    return Episodes(
        index=table[EPISODE_INDEX].to_numpy(np.int64),
        length=table["length"].to_numpy(np.int64),
        start=table["dataset_from_index"].to_numpy(np.int64),
        task=[_single_task(row) for _, row in table.iterrows()],
        data_type=table[DATA_TYPE].astype(str).tolist(),
        success=table[SUCCESS].to_numpy(bool),
        operator=table[OPERATOR].fillna("").astype(str).tolist() if OPERATOR in table else [""] * len(table),
    )


def _check_episode_columns(table: pd.DataFrame) -> None:
    first = int(table[EPISODE_INDEX].iloc[0]) if EPISODE_INDEX in table and len(table) else 0
    for column in (EPISODE_INDEX, "length", "dataset_from_index", "dataset_to_index", "tasks"):
        if column not in table:
            raise LabelInputError(f"meta/episodes.{column}: missing (episode {first} and all others)")
    for column, why in ((SUCCESS, "success labels are needed"), (DATA_TYPE, "demo/auto/intervention")):
        if column not in table:
            raise LabelInputError(f"meta/episodes.{column}: missing ({why}; episode {first} and all others)")
    for position, row in table.iterrows():
        episode = row[EPISODE_INDEX]
        if episode != position:
            raise LabelInputError(
                f"meta/episodes.episode_index: episode {episode} found where {position} was expected "
                "(indices must be 0..E-1 without gaps or duplicates)"
            )
        if row["dataset_to_index"] - row["dataset_from_index"] != row["length"]:
            raise LabelInputError(
                f"meta/episodes.length: episode {episode} has length {row['length']} but spans "
                f"frames {row['dataset_from_index']}..{row['dataset_to_index']}"
            )
        if row[SUCCESS] is None or pd.isna(row[SUCCESS]):
            raise LabelInputError(f"meta/episodes.success: episode {episode} has no success label")
        if str(row[DATA_TYPE]) not in FRAME_TYPE_OF_DATA_TYPE:
            raise LabelInputError(f"meta/episodes.data_type: episode {episode} has {row['data_type']!r}")


def _single_task(row: pd.Series) -> str:
    tasks = row["tasks"]
    tasks = [] if tasks is None else [t for t in list(tasks) if isinstance(t, str) and t.strip()]
    if not tasks:
        raise LabelInputError(f"meta/episodes.tasks: episode {row['episode_index']} has no task")
    return tasks[0]


def _load_frames(root: Path, episodes: Episodes) -> Frames:
    columns = [STATE, ACTION, INTERVENTION, EPISODE_INDEX, FRAME_INDEX, INDEX]
    files = data_files(root)
    if not files:
        raise LabelInputError(f"data: no frame files under {root}")
    table = read_frame_table(files, columns)
    _check_frames(table, episodes)
    return Frames(
        state=np.stack(table[STATE].to_numpy()).astype(np.float32),
        action=np.stack(table[ACTION].to_numpy()).astype(np.float32),
        episode=table[EPISODE_INDEX].to_numpy(np.int64),
        frame_index=table[FRAME_INDEX].to_numpy(np.int64),
        intervention=table[INTERVENTION].to_numpy(bool),
    )


def _check_frames(table: pd.DataFrame, episodes: Episodes) -> None:
    index = table[INDEX].to_numpy(np.int64)
    episode = table[EPISODE_INDEX].to_numpy(np.int64)
    for e, start, length in zip(episodes.index, episodes.start, episodes.length, strict=True):
        rows = slice(start, start + length)
        if (
            start + length > len(table)
            or not np.array_equal(index[rows], np.arange(start, start + length))
            or not np.all(episode[rows] == e)
        ):
            raise LabelInputError(
                f"data.episode_index: the frames {start}..{start + length} of episode {e} "
                "(per meta/episodes) do not all carry episode_index "
                f"{e} (found {sorted(set(episode[rows].tolist()))[:5]})"
            )
    if len(table) != int(episodes.length.sum()):
        stray = sorted(set(episode.tolist()) - set(episodes.index.tolist()))[:5]
        raise LabelInputError(
            f"data.episode_index: {len(table)} frames on disk but meta/episodes indexes "
            f"{int(episodes.length.sum())}; episode(s) {stray} have frames and no metadata"
        )


def _load_images(root: Path, info: dict, key: str) -> np.ndarray:
    if info["features"][key]["dtype"] == "video":
        raise LabelInputError(f"features.{key}: video cameras are not supported for labeling from images")
    parts = []
    for table in iter_frame_tables(data_files(root), [key, INDEX]):
        parts += [_decode(cell) for cell in table.sort_values(INDEX)[key]]
    return np.stack(parts)


def _decode(cell: dict) -> np.ndarray:
    """An HF Image cell ({"bytes": PNG, "path": ...}) as (3, H, W) uint8."""
    image = Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
    return np.asarray(image).transpose(2, 0, 1).copy()
