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
    DONE,
    END_REASON,
    EPISODE_INDEX,
    FRAME_INDEX,
    FRAME_TYPE_OF_DATA_TYPE,
    INDEX,
    INFO_FILE,
    INTERVENTION,
    NUM_INTERVENTION_FRAMES,
    OPERATOR,
    POLICY_VERSION,
    POLICY_VERSIONS,
    REWARD,
    ROBOT,
    SEED,
    STATE,
    SUCCESS,
    DataType,
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


# Who drove the frames of a dataset without the per-frame `intervention` feature (StockFields.driver).
OPERATOR_DRIVER = "operator"  # lerobot-record: the teleoperator drove every frame
POLICY_DRIVER = "policy"  # lerobot-rollout's base/sentry/highlight/episodic strategies: the policy did
DRIVERS = (OPERATOR_DRIVER, POLICY_DRIVER)


@dataclass(frozen=True)
class StockFields:
    """What the user says about a dataset recorded by stock LeRobot tools (lerobot-record,
    lerobot-rollout), which lack the flywheel's fields (docs/dataset.md, "Datasets from stock LeRobot
    tools"). Used only where the dataset lacks the field; a dataset that has it is read as it is.

    success_episodes / assume_success: the outcome, for a dataset without meta/episodes.success
    (stock tools record no reward): the listed episodes succeeded and the others failed, or every
    episode succeeded. Given for a dataset with its own success labels, they are refused.
    driver: who drove every frame of a dataset without the per-frame `intervention` feature."""

    success_episodes: tuple[int, ...] | None = None
    assume_success: bool = False
    driver: str = OPERATOR_DRIVER

    def __post_init__(self) -> None:
        if self.driver not in DRIVERS:
            raise ValueError(f"dataset.driver: {self.driver!r} is not one of {DRIVERS}")
        if self.assume_success and self.success_episodes is not None:
            raise ValueError("reward.assume_success and reward.success_episodes: give one, not both")

    @property
    def gives_success(self) -> bool:
        return self.assume_success or self.success_episodes is not None


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
    # The flywheel fields the dataset lacks (a stock LeRobot dataset), derived in memory
    # (docs/dataset.md): per-frame columns in global `index` order, and per-episode columns in
    # episode order. `flywheel label` writes them into the labeled copy; the source is never changed.
    derived_frames: dict[str, np.ndarray] = field(default_factory=dict)
    derived_episodes: dict[str, list] = field(default_factory=dict)

    def task_of_frames(self) -> np.ndarray:
        """Per-frame task string."""
        return np.asarray(self.episodes.task, dtype=object)[self.frames.episode]

    def frame_data_type_ids(self) -> np.ndarray:
        """Per-frame FrameType ids: DEMO, AUTO, INTERVENTION (the operator's frames inside a policy
        episode); see flywheel.contracts.dataset.frame_types."""
        return frame_types(self.episodes.data_type, self.frames.episode, self.frames.intervention)


def camera_keys(info: dict) -> list[str]:
    return sorted(k for k, ft in info["features"].items() if ft["dtype"] in ("image", "video"))


def load_source(root: Path, with_images: bool = False, stock: StockFields | None = None) -> Source:
    """`with_images` also decodes every camera frame (parquet-stored images only). `stock` says what
    the flywheel fields a stock LeRobot dataset lacks cannot tell (its outcome, who drove it)."""
    root = Path(root)
    stock = stock or StockFields()
    info = _read_info(root)
    table = _episode_table(root, stock)
    has_intervention = INTERVENTION in info["features"]
    frames = _load_frames(root, table, has_intervention, stock)
    derived_frames = {} if has_intervention else {INTERVENTION: frames.intervention}
    derived_episodes = _derive_episode_columns(table, frames, info, stock)
    episodes = _episodes(table, derived_episodes)
    _derive_frame_columns(info, episodes, frames, derived_frames)
    if with_images:
        frames.images = {key: _load_images(root, info, key) for key in camera_keys(info)}
    return Source(
        root=root,
        info=info,
        episodes=episodes,
        frames=frames,
        derived_frames=derived_frames,
        derived_episodes=derived_episodes,
    )


def check_dataset(root: Path, stock: StockFields | None = None) -> dict:
    """The checks `load_source` makes before it reads any frame (info.json's features, then every
    episode's metadata), for a dataset that may still be recorded into: an episode metadata file
    without its footer yet (the recorder is writing it now) is left out, as `snapshot` leaves it out.
    Returns info.json."""
    root = Path(root)
    info = _read_info(root)
    try:
        _episode_table(root, stock or StockFields(), skip_unfinished=True)
    except LabelInputError as e:  # its messages name the episode; say which dataset too
        raise LabelInputError(f"{e} in the dataset at {root}") from e
    return info


def _read_info(root: Path) -> dict:
    path = info_path(root)
    if not path.exists():
        raise LabelInputError(f"{INFO_FILE}: {root} holds no LeRobot dataset")
    info = read_json_retrying(path)  # the recorder rewrites it in place on every save
    for key in (STATE, ACTION):  # `intervention` may be absent (a stock dataset): derived then
        if key not in info["features"]:
            raise LabelInputError(f"features.{key}: missing from {path} (episode: all)")
    return info


def _episode_table(root: Path, stock: StockFields, skip_unfinished: bool = False) -> pd.DataFrame:
    files = episode_files(root)
    if not files:
        raise LabelInputError(f"meta/episodes: no episode metadata under {root}")
    table = read_episode_table(files, skip_unfinished=skip_unfinished)
    if table is None:
        raise LabelInputError(f"meta/episodes: no complete episode metadata under {root}")
    _check_episode_columns(table, stock)
    return table


def _episodes(table: pd.DataFrame, derived: dict[str, list]) -> Episodes:
    def column(name: str) -> pd.Series:
        return pd.Series(derived[name]) if name in derived else table[name]

    return Episodes(
        index=table[EPISODE_INDEX].to_numpy(np.int64),
        length=table["length"].to_numpy(np.int64),
        start=table["dataset_from_index"].to_numpy(np.int64),
        task=[_single_task(row) for _, row in table.iterrows()],
        data_type=column(DATA_TYPE).astype(str).tolist(),
        success=column(SUCCESS).to_numpy(bool),
        operator=column(OPERATOR).fillna("").astype(str).tolist(),
    )


def _check_episode_columns(table: pd.DataFrame, stock: StockFields) -> None:
    first = int(table[EPISODE_INDEX].iloc[0]) if EPISODE_INDEX in table and len(table) else 0
    for column in (EPISODE_INDEX, "length", "dataset_from_index", "dataset_to_index", "tasks"):
        if column not in table:
            raise LabelInputError(f"meta/episodes.{column}: missing (episode {first} and all others)")
    if SUCCESS not in table and not stock.gives_success:
        raise LabelInputError(
            f"meta/episodes.{SUCCESS}: missing (success labels are needed; episode {first} and all "
            "others). A dataset from stock LeRobot tools records no outcome: give it with "
            "--reward.success_episodes=[i,j,...] (the episodes that succeeded; the others failed) or "
            "--reward.assume_success=true; under flywheel trainer --label.reward.... (docs/dataset.md)"
        )
    if SUCCESS in table and stock.gives_success:
        raise LabelInputError(
            f"reward.success_episodes / reward.assume_success: the dataset has its own "
            f"meta/episodes.{SUCCESS}; these are only for a dataset without it (a stock LeRobot one)"
        )
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
        if SUCCESS in table and (row[SUCCESS] is None or pd.isna(row[SUCCESS])):
            raise LabelInputError(f"meta/episodes.success: episode {episode} has no success label")
        if DATA_TYPE in table and str(row[DATA_TYPE]) not in FRAME_TYPE_OF_DATA_TYPE:
            raise LabelInputError(f"meta/episodes.data_type: episode {episode} has {row['data_type']!r}")
    if stock.success_episodes is not None:
        unknown = sorted(set(stock.success_episodes) - set(table[EPISODE_INDEX].tolist()))
        if unknown:
            raise LabelInputError(
                f"reward.success_episodes: episode(s) {unknown[:5]} are not in the dataset "
                f"(it has episodes 0..{len(table) - 1})"
            )


def _derive_episode_columns(
    table: pd.DataFrame, frames: Frames, info: dict, stock: StockFields
) -> dict[str, list]:
    """The flywheel's per-episode columns the dataset lacks (docs/dataset.md, "Datasets from stock
    LeRobot tools"). `data_type` from the episode's intervention flags: none -> auto, some -> intervention,
    all of a dataset without the `intervention` feature driven by the operator -> demo."""
    derived: dict[str, list] = {}
    n = len(table)
    starts, lengths = table["dataset_from_index"].to_numpy(np.int64), table["length"].to_numpy(np.int64)
    flags = [frames.intervention[s : s + length] for s, length in zip(starts, lengths, strict=True)]
    operator_only = INTERVENTION not in info["features"] and stock.driver == OPERATOR_DRIVER
    if SUCCESS not in table:
        if stock.assume_success:
            derived[SUCCESS] = [True] * n
        else:
            succeeded = set(stock.success_episodes or ())
            derived[SUCCESS] = [int(e) in succeeded for e in table[EPISODE_INDEX]]
    if DATA_TYPE not in table:
        derived[DATA_TYPE] = [
            str(DataType.DEMO if operator_only else DataType.INTERVENTION if f.any() else DataType.AUTO)
            for f in flags
        ]
    if NUM_INTERVENTION_FRAMES not in table:
        derived[NUM_INTERVENTION_FRAMES] = [int(f.sum()) for f in flags]
    if POLICY_VERSIONS not in table:
        # 0: the operator acted; 1: a policy of unknown version (the contract's "another pretrained folder")
        derived[POLICY_VERSIONS] = [sorted({0 if x else 1 for x in f.tolist()}) for f in flags]
    robot = str(info.get("robot_type") or "")
    for column, value in ((OPERATOR, ""), (ROBOT, robot), (SEED, -1), (END_REASON, "")):
        if column not in table:
            derived[column] = [value] * n
    return derived


def _derive_frame_columns(
    info: dict, episodes: Episodes, frames: Frames, derived: dict[str, np.ndarray]
) -> None:
    """The flywheel's per-frame features the dataset lacks, next to `intervention` (derived by
    `_load_frames`): policy_version 0 on the operator's frames and 1 (a policy of unknown version)
    elsewhere; next.done on each episode's last frame; next.reward 1.0 there if the episode succeeded."""
    features = info["features"]
    last = np.zeros(len(frames), dtype=bool)
    last[episodes.start + episodes.length - 1] = True
    if POLICY_VERSION not in features:
        derived[POLICY_VERSION] = np.where(frames.intervention, 0, 1).astype(np.int64)
    if DONE not in features:
        derived[DONE] = last
    if REWARD not in features:
        derived[REWARD] = (last & episodes.success[frames.episode]).astype(np.float32)


def _single_task(row: pd.Series) -> str:
    tasks = row["tasks"]
    tasks = [] if tasks is None else [t for t in list(tasks) if isinstance(t, str) and t.strip()]
    if not tasks:
        raise LabelInputError(f"meta/episodes.tasks: episode {row['episode_index']} has no task")
    return tasks[0]


def _load_frames(root: Path, episodes: pd.DataFrame, has_intervention: bool, stock: StockFields) -> Frames:
    """Without the `intervention` feature (a stock dataset) every frame's flag is that of its driver
    (`stock.driver`): True where the operator drove every frame, as `flywheel record` tags a demo."""
    columns = [STATE, ACTION, EPISODE_INDEX, FRAME_INDEX, INDEX]
    columns += [INTERVENTION] if has_intervention else []
    files = data_files(root)
    if not files:
        raise LabelInputError(f"data: no frame files under {root}")
    table = read_frame_table(files, columns)
    _check_frames(table, episodes)
    if has_intervention:
        intervention = table[INTERVENTION].to_numpy(bool)
    else:
        intervention = np.full(len(table), stock.driver == OPERATOR_DRIVER)
    return Frames(
        state=np.stack(table[STATE].to_numpy()).astype(np.float32),
        action=np.stack(table[ACTION].to_numpy()).astype(np.float32),
        episode=table[EPISODE_INDEX].to_numpy(np.int64),
        frame_index=table[FRAME_INDEX].to_numpy(np.int64),
        intervention=intervention,
    )


def _check_frames(table: pd.DataFrame, episodes: pd.DataFrame) -> None:
    index = table[INDEX].to_numpy(np.int64)
    episode = table[EPISODE_INDEX].to_numpy(np.int64)
    starts = episodes["dataset_from_index"].to_numpy(np.int64)
    lengths = episodes["length"].to_numpy(np.int64)
    for e, start, length in zip(episodes[EPISODE_INDEX].to_numpy(np.int64), starts, lengths, strict=True):
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
    if len(table) != int(lengths.sum()):
        stray = sorted(set(episode.tolist()) - set(episodes[EPISODE_INDEX].tolist()))[:5]
        raise LabelInputError(
            f"data.episode_index: {len(table)} frames on disk but meta/episodes indexes "
            f"{int(lengths.sum())}; episode(s) {stray} have frames and no metadata"
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
