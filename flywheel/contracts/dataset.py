"""The flywheel's dataset: LeRobotDataset v3 plus the fields RECAP needs (docs/dataset.md).

Per frame, besides the robot's `observation.*` and `action`:
    intervention    bool   the operator was in control on this tick (pedal down); if their stream
                           was stale, the hold action was sent instead of theirs
    policy_version  int64  the version of the policy that acted; 0 when the operator acted
                           (interventions, operator-only demos)
    next.reward     float  1.0 on the last frame of a successful episode, else 0.0
    next.done       bool   True on the last frame of the episode
Per episode (extra columns of meta/episodes, next to LeRobot's own):
    data_type       str    demo | auto | intervention
    success         bool
    num_intervention_frames, policy_versions, operator, robot, seed, end_reason

Append-only: each saved episode is written to its own data and metadata parquet files, closed
(with footers) before the next episode starts, so a crash loses at most the episode in progress and
never touches what is saved.

This module is the one owner of that on-disk contract: the layout (paths under the dataset's root,
and the one reader of the episode metadata and frame tables), the column names, the label features
a `flywheel label` output adds, and the episode and frame types (DataType, FrameType). The rest of
the project reads and writes datasets through it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.contracts.files import write_text_atomically

if TYPE_CHECKING:
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

# LeRobot's dataset classes are imported where they are used, not here: they pull in torch and
# transformers (about 1.1 GB and seconds of start-up), and the layout and readers below are all that
# an arm's uplink (flywheel/uplink/) needs of this module.

log = logging.getLogger(__name__)

# --- On-disk layout (LeRobotDataset v3), relative to the dataset's root --------------------------
INFO_FILE = "meta/info.json"
STATS_FILE = "meta/stats.json"
TASKS_FILE = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"  # <chunk>/<file>.parquet: one row per episode
DATA_DIR = "data"  # <chunk>/<file>.parquet: one row per frame
QUARANTINE_DIR = "quarantine"  # data files no saved episode refers to (quarantine_unindexed_files)
LABELS_FILE = "meta/recap_labels.json"  # the labeling's report; marks a `flywheel label` output
# LeRobot v3's file paths (lerobot.datasets.utils DEFAULT_DATA_PATH, DEFAULT_EPISODES_PATH; the same
# strings, tests/test_dataset.py checks).
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# In the trainer's union of a fleet's datasets (trainer/union.py): each union episode's arm and that
# arm's own episode index (`read_fleet_arms`).
FLEET_ARMS_FILE = "meta/fleet_arms.json"


def info_path(root: Path | str) -> Path:
    return Path(root) / INFO_FILE


def labels_path(root: Path | str) -> Path:
    """The labels report of a labeled dataset at `root`."""
    return Path(root) / LABELS_FILE


def fleet_arms_path(root: Path | str) -> Path:
    """The arms file of a fleet union at `root` (FLEET_ARMS_FILE)."""
    return Path(root) / FLEET_ARMS_FILE


@dataclass(frozen=True)
class FleetEpisode:
    """Where one episode of a fleet union came from."""

    arm: str
    arm_episode_index: int  # its index in that arm's own dataset

    @property
    def key(self) -> str:
        """`<arm>/<index>`: how the trainer's intake names the episode (trainer/union.py)."""
        return f"{self.arm}/{self.arm_episode_index}"


def read_fleet_arms(root: Path | str) -> dict[int, FleetEpisode]:
    """Each episode of the fleet union at `root`, by its union episode_index: its arm and that arm's
    own episode index. FileNotFoundError when `root` is not a fleet union."""
    rows = json.loads(fleet_arms_path(root).read_text())["episodes"]
    return {int(r["episode_index"]): FleetEpisode(r["arm"], int(r["arm_episode_index"])) for r in rows}


def data_file(chunk_index: int, file_index: int) -> Path:
    """A data file's path relative to the dataset's root."""
    return Path(DATA_PATH.format(chunk_index=chunk_index, file_index=file_index))


def episode_file(chunk_index: int, file_index: int) -> Path:
    """An episode metadata file's path relative to the dataset's root."""
    return Path(EPISODES_PATH.format(chunk_index=chunk_index, file_index=file_index))


def data_files(root: Path | str) -> list[Path]:
    """Every frame file of the dataset at `root` (data/*/*.parquet), in path order."""
    return sorted((Path(root) / DATA_DIR).glob("*/*.parquet"))


def episode_files(root: Path | str) -> list[Path]:
    """Every episode metadata file of the dataset at `root` (meta/episodes/*/*.parquet), in path order."""
    return sorted((Path(root) / EPISODES_DIR).glob("*/*.parquet"))


def read_episode_files(
    files: Iterable[Path], *, columns: list[str] | None = None, skip_unfinished: bool = False
) -> list[tuple[Path, pd.DataFrame]]:
    """The table of each episode metadata file (`episode_files`), with its path.

    A file the recorder is writing right now has no footer yet: with `skip_unfinished` it is left
    out, otherwise its read error is raised."""
    tables = []
    for path in files:
        try:
            tables.append((path, pd.read_parquet(path, columns=columns)))
        except Exception:  # no footer yet: the recorder is writing this episode now
            if not skip_unfinished:
                raise
    return tables


def read_episode_table(files: Iterable[Path], *, skip_unfinished: bool = False) -> pd.DataFrame | None:
    """The episode metadata table: the files' tables (`read_episode_files`) concatenated, one row
    per episode ordered by episode_index (a stable sort); None when no file could be read."""
    tables = [table for _, table in read_episode_files(files, skip_unfinished=skip_unfinished)]
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(EPISODE_INDEX, kind="stable").reset_index(drop=True)


def frame_columns(files: Sequence[Path]) -> set[str]:
    """The columns of the frame files (those of the first: LeRobot writes them all alike)."""
    return set(pq.read_schema(files[0]).names)


def iter_frame_tables(files: Iterable[Path], columns: list[str]) -> Iterator[pd.DataFrame]:
    """The `columns` of each frame file (`data_files`), one table per file, in the files' order."""
    for path in files:
        yield pq.read_table(path, columns=columns).to_pandas()


def read_frame_table(files: Iterable[Path], columns: list[str]) -> pd.DataFrame:
    """The `columns` of every frame of the files (`data_files`), concatenated and ordered by the
    frame's dataset `index` (a stable sort; `columns` must include it)."""
    table = pd.concat(list(iter_frame_tables(files, columns)), ignore_index=True)
    return table.sort_values(INDEX, kind="stable").reset_index(drop=True)


# --- Column names ----------------------------------------------------------------------------------
# LeRobot's own, which the flywheel's readers use
INDEX = "index"
EPISODE_INDEX = "episode_index"
FRAME_INDEX = "frame_index"
STATE = "observation.state"
ACTION = "action"

# The flywheel's per-frame features
INTERVENTION = "intervention"
POLICY_VERSION = "policy_version"
REWARD = "next.reward"
DONE = "next.done"

FLYWHEEL_FRAME_FEATURES: dict[str, dict[str, Any]] = {
    INTERVENTION: {"dtype": "bool", "shape": (1,), "names": None},
    POLICY_VERSION: {"dtype": "int64", "shape": (1,), "names": None},
    REWARD: {"dtype": "float32", "shape": (1,), "names": None},
    DONE: {"dtype": "bool", "shape": (1,), "names": None},
}

# The flywheel's per-episode columns of meta/episodes (EpisodeInfo's fields, EPISODE_COLUMNS)
DATA_TYPE = "data_type"
SUCCESS = "success"
NUM_INTERVENTION_FRAMES = "num_intervention_frames"
POLICY_VERSIONS = "policy_versions"
OPERATOR = "operator"
ROBOT = "robot"
SEED = "seed"
END_REASON = "end_reason"

# The per-frame features `flywheel label` adds (flywheel/recap/writer.py)
VALUE = "value"  # V(o_t), normalized return (IQL: discounted return)
ADVANTAGE = "advantage"  # A_t
ADVANTAGE_POSITIVE = "advantage_positive"  # the binary RECAP indicator
# The same indicator as 1.0 / 0.0: observation.* keys survive LeRobot's preprocessor, so this is the
# one that reaches policy.forward under lerobot-train.
OBS_ADVANTAGE_POSITIVE = "observation.advantage_positive"

LABEL_FEATURES: dict[str, dict] = {
    VALUE: {"dtype": "float32", "shape": (1,), "names": None},
    ADVANTAGE: {"dtype": "float32", "shape": (1,), "names": None},
    ADVANTAGE_POSITIVE: {"dtype": "bool", "shape": (1,), "names": None},
    OBS_ADVANTAGE_POSITIVE: {"dtype": "float32", "shape": (1,), "names": None},
}


class DataType(StrEnum):
    """An episode's type (its `data_type` column)."""

    DEMO = "demo"  # operator only (flywheel record)
    AUTO = "auto"  # the policy acted on every frame
    INTERVENTION = "intervention"  # the operator took over on at least one frame


class FrameType(IntEnum):
    """A frame's type, as the labeling and the trainer's sampler weigh it (`frame_types`).

    Each member has the name of a DataType: a frame of a DEMO episode is DEMO; a frame of an AUTO
    episode is AUTO; a frame of an INTERVENTION episode is INTERVENTION where the operator was in
    control (its `intervention` flag), AUTO elsewhere."""

    DEMO = 0
    AUTO = 1
    INTERVENTION = 2

    @classmethod
    def of(cls, data_type: str) -> FrameType:
        """The type of an episode's frames by its `data_type` (KeyError for another value)."""
        return FRAME_TYPE_OF_DATA_TYPE[data_type]

    @property
    def data_type(self) -> DataType:
        """The episode data type of the same name (its str is the name datasets and reports use)."""
        return DataType[self.name]


# The one mapping between the two (keys are DataType members, which are also their str values).
FRAME_TYPE_OF_DATA_TYPE: dict[str, FrameType] = {t: FrameType[t.name] for t in DataType}


def frame_types(
    episode_data_types: Sequence[str], frame_episode: np.ndarray, intervention: np.ndarray
) -> np.ndarray:
    """Per-frame FrameType ids (int64): `frame_episode` is each frame's position in
    `episode_data_types`, `intervention` its intervention flag."""
    episode_type = np.array([int(FRAME_TYPE_OF_DATA_TYPE[t]) for t in episode_data_types])[frame_episode]
    ids = np.where(episode_type == FrameType.DEMO, int(FrameType.DEMO), int(FrameType.AUTO))
    operator = (episode_type == FrameType.INTERVENTION) & intervention
    return np.where(operator, int(FrameType.INTERVENTION), ids)


@dataclass
class EpisodeInfo:
    """What the flywheel adds to LeRobot's per-episode metadata."""

    data_type: DataType
    success: bool
    num_intervention_frames: int = 0
    policy_versions: list[int] = field(default_factory=list)
    operator: str = ""
    robot: str = ""
    seed: int = -1  # scene seed in simulation, -1 on a real arm
    end_reason: str = ""  # success | timeout | operator_success | operator_failure

    def columns(self) -> dict[str, Any]:
        row = asdict(self)
        row["data_type"] = str(self.data_type)
        return row


EPISODE_COLUMNS = tuple(EpisodeInfo.__dataclass_fields__)


def dataset_features(observation_features: dict, action_features: dict, use_videos: bool) -> dict:
    """LeRobot dataset features for a robot's observation/action features plus the flywheel's."""
    from lerobot.utils.feature_utils import hw_to_dataset_features

    return {
        **hw_to_dataset_features(observation_features, "observation", use_video=use_videos),
        **hw_to_dataset_features(action_features, "action", use_video=use_videos),
        **FLYWHEEL_FRAME_FEATURES,
    }


def open_for_append(
    root: Path, repo_id: str, fps: int, features: dict, robot_type: str, use_videos: bool
) -> LeRobotDataset:
    """Open the dataset at `root` to append episodes, or create it if it does not exist.

    An existing dataset must have been recorded with the same features and fps: appending frames of
    another shape would make it unreadable, and frames whose columns have other names would mix
    values that mean different things, so both are refused with the field that differs.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    _forget_if_never_used(root)
    if not info_path(root).exists():
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"dataset.root: {root} exists, is not empty and holds no LeRobot dataset")
        return LeRobotDataset.create(
            repo_id,
            fps,
            features,
            root=root,
            robot_type=robot_type,
            use_videos=use_videos,
            metadata_buffer_size=1,
        )
    quarantine_unindexed_files(root)
    # resume(), not LeRobotDataset(...): since lerobot 0.6 the constructor opens a dataset read-only
    # (no writer), and it loads every frame, which appending does not need.
    dataset = LeRobotDataset.resume(repo_id, root=root)
    _check_compatible(dataset, fps, features)
    # resume() takes no metadata_buffer_size (create() does): write each metadata row at once.
    dataset.meta._metadata_buffer_size = 1
    return dataset


def _forget_if_never_used(root: Path) -> None:
    """A dataset created by a run that saved no episode (it failed to connect, say) holds only
    meta/info.json. Nothing was saved in it, so it is created again, with this run's settings.

    LeRobot 0.4.4 could not reopen it at all (it looked for the data on the hub). 0.6.1's resume()
    can, but it would keep the failed run's info.json: its robot_type, and its camera dtype, so a
    retry with another `--dataset.video` would be refused as incompatible with a dataset that holds
    nothing. Creating it again keeps what 0.4.4 left on disk in that case.

    Only that file and its two folders are removed, one by one (never a tree): a root holding
    anything else is refused and left as it is, since that is not what such a run leaves."""
    info = info_path(root)
    if not info.exists() or read_json_retrying(info).get("total_episodes") != 0:
        return
    others = sorted({*root.iterdir(), *info.parent.iterdir()} - {info, info.parent})
    if others:
        raise FileExistsError(
            f"dataset.root: {root} holds no saved episode (meta/info.json says 0) but holds {others[0]}, "
            "which a run that saved nothing does not leave; move it aside or give another dataset.root"
        )
    info.unlink()
    info.parent.rmdir()  # rmdir, not rmtree: fails rather than removes anything that appeared meanwhile
    root.rmdir()


def _check_compatible(dataset: LeRobotDataset, fps: int, features: dict) -> None:
    if dataset.fps != fps:
        raise ValueError(f"fps: {fps} differs from the existing dataset's {dataset.fps} at {dataset.root}")
    for key, ft in features.items():
        old = dataset.features.get(key)
        if old is None:
            raise ValueError(f"features.{key}: missing from the existing dataset at {dataset.root}")
        if old["dtype"] != ft["dtype"] or tuple(old["shape"]) != tuple(ft["shape"]):
            raise ValueError(
                f"features.{key}: {ft['dtype']}{tuple(ft['shape'])} differs from the existing "
                f"{old['dtype']}{tuple(old['shape'])} at {dataset.root}"
            )
        _check_same_names(key, old.get("names"), ft.get("names"), dataset.root)


def _check_same_names(key: str, old, new, root: Path) -> None:
    """Same dtype and shape is not enough: the columns must also mean the same (info.json's `names`).
    A renamed or reordered state or action would otherwise be appended silently under the old names
    (e.g. a sim dataset recorded before its features got LeRobot's `.pos`/`.vel` suffixes)."""
    old, new = _as_list(old), _as_list(new)
    if old == new:
        return
    if isinstance(old, list) and isinstance(new, list):
        i = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))
        )
        mine = repr(new[i]) if i < len(new) else "nothing"
        theirs = repr(old[i]) if i < len(old) else "nothing"
        detail = f"name {i} is {mine}, the existing dataset's is {theirs}"
    else:
        detail = f"names {new!r}, the existing dataset's are {old!r}"
    raise ValueError(
        f"features.{key}: {detail} at {root}; appending would mix columns that mean different "
        "things, so record into another dataset.root"
    )


def _as_list(names):
    return list(names) if isinstance(names, (list, tuple)) else names


def save_episode(dataset: LeRobotDataset, info: EpisodeInfo) -> None:
    """Save the buffered episode with the flywheel's per-episode columns, then seal its files.

    LeRobot (0.4.4, and 0.6.1's DatasetWriter.save_episode) has no hook for extra per-episode
    metadata, so the columns are merged into the metadata row on its way to `meta.save_episode`
    (which the writer calls with these five arguments, positionally).
    """
    meta = dataset.meta
    original = meta.save_episode

    def save_with_columns(episode_index, episode_length, episode_tasks, episode_stats, episode_metadata):
        original(
            episode_index,
            episode_length,
            episode_tasks,
            episode_stats,
            {**episode_metadata, **info.columns()},
        )

    meta.save_episode = save_with_columns
    try:
        dataset.save_episode()
    finally:
        del meta.save_episode
    _seal(dataset)


def _seal(dataset: LeRobotDataset) -> None:
    """Close the parquet writers so the episode's files are complete on disk, and make the next
    episode start new files (LeRobot would otherwise reopen the last file and truncate it).

    Not dataset.finalize(): in lerobot 0.6 it is once only (a `_finalized` flag on the dataset, its
    DatasetWriter and its metadata), so from the second episode on it would close nothing; and it
    would also stop the writer's image writer for good. The two parquet writers, all that 0.4.4's
    finalize() closed here, are closed directly instead."""
    writer, meta = dataset.writer, dataset.meta
    writer.close_writer()  # data/...: footer written
    meta._close_writer()  # meta/episodes/...: the buffered row written (buffer size 1), footer written
    # Back to the state of a freshly resumed dataset: with no latest episode, the writer and the
    # metadata each take the file after meta.episodes[-1]'s, which is why meta.episodes must hold
    # the episode just saved (LeRobot does not add it: neither 0.4.4 nor 0.6.1 updates
    # meta.episodes on save).
    meta.episodes = _with_latest_episode(meta)
    writer._latest_episode = None  # data: the next episode goes to the next file
    meta.latest_episode = None  # metadata: likewise


def _with_latest_episode(meta: LeRobotDatasetMetadata) -> datasets.Dataset:
    """`meta.episodes` (what LeRobot's load_episodes gives: every saved episode, no stats/ columns)
    plus the episode just saved, read from its own metadata file and kept in memory.

    Not load_episodes(root): that reads every episode's file again through
    datasets.Dataset.from_parquet, which writes a new Arrow copy of the whole episode table into
    ~/.cache/huggingface/datasets on every call. Once per saved episode, that made each save slower
    than the last, filled the disk quadratically (a new cache folder per episode, each the size of
    the whole table) and grew the daemon's RSS by 0.3-0.5 MB per episode: freed but fragmented
    glibc heap (live allocations stayed flat; malloc_trim gave most of it back). It was all of the
    soak's steady growth, about 3 MB a minute (tests/test_memory.py, benchmarks/soak.py).

    Still needed on lerobot 0.6.1: its load_episodes (lerobot.datasets.io_utils) is unchanged, still
    Dataset.from_parquet over every episode file, and nothing in LeRobot updates meta.episodes
    after a save, so the table has to be extended here one way or the other.
    """
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    latest = meta.latest_episode  # the row LeRobot just wrote (the metadata buffer holds one)
    path = meta.root / episode_file(
        latest["meta/episodes/chunk_index"][0], latest["meta/episodes/file_index"][0]
    )
    new = pq.read_table(path)
    new = new.select([c for c in new.column_names if not c.startswith("stats/")])
    if meta.episodes is not None and len(meta.episodes) > 0:
        new = new.filter(pc.greater(new["episode_index"], meta.episodes[-1]["episode_index"]))
        # One chunk per column, not one more per episode: copying the small table is cheaper.
        new = pa.concat_tables([meta.episodes.data.table, new], promote_options="permissive")
        new = new.combine_chunks()
    # A fingerprint given, not computed: datasets would hash the whole table on every save.
    return datasets.Dataset(new, fingerprint=generate_random_fingerprint())


def quarantine_unindexed_files(root: Path) -> list[Path]:
    """Move data files that no saved episode refers to (a crash between writing an episode's data
    and its metadata) into `root/quarantine/`, so the dataset loads. Nothing is deleted."""
    referenced: set[Path] = set()
    for _, df in read_episode_files(episode_files(root), columns=["data/chunk_index", "data/file_index"]):
        for chunk, file in zip(df["data/chunk_index"], df["data/file_index"], strict=True):
            referenced.add(root / data_file(chunk, file))
    moved = []
    for path in data_files(root):
        if path not in referenced:
            target = root / QUARANTINE_DIR / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
            log.warning("moved %s, which no saved episode refers to, to %s", path, target)
            moved.append(target)
    return moved


def episode_table(dataset: LeRobotDataset) -> pd.DataFrame:
    """One row per saved episode: index, length, tasks and the flywheel's columns."""
    episodes = dataset.meta.episodes
    columns = ["episode_index", "length", "tasks", *EPISODE_COLUMNS]
    missing = [c for c in columns if c not in episodes.column_names]
    if missing:
        raise ValueError(f"meta/episodes: the dataset at {dataset.root} has no column(s) {missing}")
    return episodes.select_columns(columns).to_pandas()


def snapshot(root: Path, dest: Path) -> list[int]:
    """A consistent, read-only view of a dataset that is still being recorded into, at `dest`.

    Saved episodes' files never change (see save_episode), so they are hard-linked (copied across
    filesystems); the few files LeRobot rewrites on every save (info, stats, tasks) are copied, and
    info's totals are set to the episodes in the snapshot. An episode being written right now (its
    metadata file not yet complete) is left out. Returns the episode indices in the snapshot.
    """
    root, dest = Path(root), Path(dest)
    if dest.exists():
        raise FileExistsError(f"snapshot: {dest} exists")
    if root.resolve() in dest.resolve().parents:
        raise ValueError(f"snapshot: {dest} must not be inside the dataset it copies ({root})")
    rows = read_episode_files(episode_files(root), skip_unfinished=True)
    episodes = pd.concat([df for _, df in rows], ignore_index=True) if rows else pd.DataFrame()
    for path, _ in rows:
        _link(path, dest / path.relative_to(root))
    for relative in _data_files(episodes):
        _link(root / relative, dest / relative)
    info_path(dest).parent.mkdir(parents=True, exist_ok=True)
    for name in (STATS_FILE, TASKS_FILE):
        if (root / name).exists():
            shutil.copy2(root / name, dest / name)
    frames = int(episodes["length"].sum()) if len(episodes) else 0
    write_info_with_totals(dest, read_json_retrying(info_path(root)), len(episodes), frames)
    return sorted(int(i) for i in episodes.get("episode_index", []))


def write_info_with_totals(root: Path, info: dict, episodes: int, frames: int) -> None:
    """meta/info.json at `root`: `info` (another copy's) with the totals of the `episodes` episodes
    (`frames` frames) that `root` holds, written whole or not at all."""
    info = {**info, "total_episodes": episodes, "total_frames": frames, "splits": {"train": f"0:{episodes}"}}
    info_path(root).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(info_path(root), json.dumps(info, indent=4))


def _data_files(episodes: pd.DataFrame) -> list[Path]:
    """The data files the episodes' frames are in, each once: stock LeRobot (lerobot-record) packs
    several episodes into one file, which is linked once, not once per episode."""
    files = set(zip(episodes.get("data/chunk_index", []), episodes.get("data/file_index", []), strict=True))
    return [data_file(chunk, file) for chunk, file in sorted(files)]


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        raise  # never copy over what is there (it may be `source` itself, through a link)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def read_json_retrying(path: Path, attempts: int = 20) -> dict:
    """info.json is rewritten in place on every save; a read can land mid-write."""
    for _ in range(attempts):
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            time.sleep(0.05)
    raise ValueError(f"{path}: not valid JSON after {attempts} reads")


@dataclass
class DatasetConfig:
    # Where episodes are recorded (a LeRobotDataset v3). Appended to when it exists.
    root: Path = Path("outputs/datasets/flywheel")
    # The dataset's repo id (used only as a name: nothing is pushed).
    repo_id: str = "local/flywheel"
    # Store camera streams as videos (LeRobot's default) instead of per-frame PNG in parquet.
    # Off by default: LeRobot v3 appends episodes to shared video files, which rewrites them.
    video: bool = False
    # Record at all (off: benchmarks and dry runs; nothing is written).
    record: bool = True
