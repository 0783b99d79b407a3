"""Replay a recorded or labeled flywheel dataset into Rerun, with the live view's layout.

Reads the parquet files directly (with the readers of flywheel/contracts/dataset.py, like
flywheel/recap/source.py) so a replay needs no LeRobot dataset object, and sends whole columns at
once (`send_columns`): a 100k-frame dataset replays in seconds instead of minutes of per-frame `log`
calls.

Same entity paths as the live logger. A replay has no pedal and no operator/hold distinction
beyond the dataset's fields: an action is `operator` on intervention frames, `hold` when
policy_version is 0 outside interventions (nothing acted), else `policy`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rerun as rr

from flywheel.contracts.dataset import (
    ACTION,
    ADVANTAGE,
    ADVANTAGE_POSITIVE,
    DATA_TYPE,
    END_REASON,
    EPISODE_INDEX,
    FRAME_INDEX,
    INDEX,
    INFO_FILE,
    INTERVENTION,
    POLICY_VERSION,
    STATE,
    SUCCESS,
    VALUE,
    data_files,
    episode_files,
    frame_columns,
    info_path,
    labels_path,
    read_episode_table,
    read_frame_table,
)
from flywheel.viz import paths as p

log = logging.getLogger(__name__)

LABEL_COLUMNS = (VALUE, ADVANTAGE, ADVANTAGE_POSITIVE)


@dataclass
class DatasetLayout:
    root: Path
    fps: int
    state_names: list[str]
    action_names: list[str]
    image_keys: list[str]  # observation.images.* stored in parquet (PNG bytes)
    video_keys: list[str]  # observation.images.* stored as video (not replayed)
    labeled: bool

    @property
    def camera_names(self) -> list[str]:
        return [k.removeprefix("observation.images.") for k in self.image_keys]


def read_layout(root: Path) -> DatasetLayout:
    info = info_path(root)
    if not info.exists():
        raise FileNotFoundError(f"dataset.root: {root} holds no LeRobot dataset (no {INFO_FILE})")
    features = json.loads(info.read_text())["features"]
    images = [k for k, v in features.items() if k.startswith("observation.images.")]
    return DatasetLayout(
        root=Path(root),
        fps=int(json.loads(info.read_text()).get("fps", 30)),
        state_names=list(features.get(STATE, {}).get("names") or []),
        action_names=list(features.get(ACTION, {}).get("names") or []),
        image_keys=[k for k in images if features[k]["dtype"] == "image"],
        video_keys=[k for k in images if features[k]["dtype"] == "video"],
        labeled=all(c in features for c in LABEL_COLUMNS),
    )


def read_frames(layout: DatasetLayout, columns: list[str]) -> pd.DataFrame:
    files = data_files(layout.root)
    if not files:
        raise FileNotFoundError(f"dataset.root: no frame files under {layout.root}/data")
    names = frame_columns(files)
    return read_frame_table(files, [c for c in columns if c in names])


def read_episodes(root: Path) -> pd.DataFrame:
    keep = [EPISODE_INDEX, "tasks", "length", DATA_TYPE, SUCCESS, END_REASON, "dataset_from_index"]
    episodes = read_episode_table(episode_files(root))  # ordered by episode_index
    if episodes is None:
        episodes = pd.DataFrame(columns=keep)
    return episodes[[c for c in keep if c in episodes]].reset_index(drop=True)


def first_task(tasks: object) -> str:
    """The first task string of a meta/episodes `tasks` cell (a list or an array)."""
    return next(iter(tasks), "") if tasks is not None else ""


def _column(frames: pd.DataFrame, key: str) -> np.ndarray:
    values = frames[key].to_numpy()
    if len(values) and isinstance(values[0], np.ndarray):
        return np.stack(values).reshape(len(values), -1)
    return np.asarray(values)


def send_scalars(stream: rr.RecordingStream, path: str, frames: np.ndarray, values: np.ndarray) -> None:
    """One entity's scalars at the given `frame` times (one column or one row per time)."""
    if len(frames) == 0:
        return
    values = np.asarray(values, dtype=np.float64)
    columns = rr.Scalars.columns(scalars=values.reshape(len(frames), -1))
    stream.send_columns(path, indexes=[rr.TimeColumn(p.FRAME, sequence=frames)], columns=columns)


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def log_labeled_episode(
    stream: rr.RecordingStream,
    episode_index: int,
    values: np.ndarray,
    advantages: np.ndarray,
    positive: np.ndarray,
    threshold: float | np.ndarray | None,
    *,
    start_frame: int = 0,
    prefix: str = p.LABELS,
    timeline: str = p.DATASET_INDEX,
) -> None:
    """One relabeled episode: value curve, advantage, threshold, positive/negative frames marked.

    The trainer calls this after labeling, into the daemon's recording (same application and
    recording id): it lands under `labels/...` on the `dataset_index` timeline (the frames' dataset
    `index`: pass the episode's first index as `start_frame`), apart from the live ticks. The replay
    calls it with prefix "" and the `frame` timeline, so labels sit on the replayed frames."""
    values, advantages = np.asarray(values, np.float64), np.asarray(advantages, np.float64)
    positive = np.asarray(positive, bool).reshape(-1)
    frames = start_frame + np.arange(len(values))
    root = f"{prefix}/" if prefix else ""

    def send(path: str, at: np.ndarray, data: np.ndarray) -> None:
        if len(at):
            columns = rr.Scalars.columns(scalars=np.asarray(data, np.float64).reshape(len(at), -1))
            stream.send_columns(root + path, indexes=[rr.TimeColumn(timeline, sequence=at)], columns=columns)

    send(p.VALUE, frames, values)
    send(p.ADVANTAGE, frames, advantages)
    if threshold is not None:
        send(p.THRESHOLD, frames, np.broadcast_to(np.asarray(threshold, np.float64), values.shape))
    send(p.POSITIVE, frames[positive], advantages[positive])
    send(p.NEGATIVE, frames[~positive], advantages[~positive])
    share = 100.0 * positive.mean() if len(positive) else 0.0
    stream.set_time(timeline, sequence=int(start_frame))
    stream.log(root + p.EVENTS, rr.TextLog(f"episode {episode_index} relabeled: {share:.0f}% positive"))


def frame_thresholds(root: Path, tasks: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """The labeling's threshold at each frame (global: per task; progress: per task and V bin)."""
    from flywheel.viz.value_monitor import Thresholds

    thresholds = Thresholds.from_labels(labels_path(root))
    if thresholds is None or not thresholds.per_task:
        return None
    return np.array([thresholds(str(t), float(v)) for t, v in zip(tasks, values, strict=True)], np.float64)


@dataclass
class ReplaySummary:
    episodes: int
    frames: int
    labeled: bool
    intervention_spans: int


def replay_dataset(
    stream: rr.RecordingStream, layout: DatasetLayout, episodes: list[int] | None = None
) -> ReplaySummary:
    """Send the dataset's frames (all, or the given episodes) on the `frame` timeline = `index`."""
    columns = [INDEX, EPISODE_INDEX, FRAME_INDEX, STATE, ACTION, INTERVENTION]
    columns += [POLICY_VERSION, *LABEL_COLUMNS, *layout.image_keys]
    frames = read_frames(layout, columns)
    if episodes is not None:
        frames = frames[frames[EPISODE_INDEX].isin(episodes)].reset_index(drop=True)
    meta = read_episodes(layout.root)
    index = frames[INDEX].to_numpy(np.int64)
    _send_robot_columns(stream, layout, frames, index)
    n_spans = _send_control_columns(stream, frames, index)
    if layout.labeled:
        _send_labels(stream, layout, frames, meta, index)
    _send_images(stream, layout, frames, index)
    _send_episode_events(stream, frames, meta)
    for key in layout.video_keys:
        log.warning("replay: %s is stored as video and is not replayed", key)
    return ReplaySummary(int(frames[EPISODE_INDEX].nunique()), len(frames), layout.labeled, n_spans)


def _send_robot_columns(
    stream: rr.RecordingStream, layout: DatasetLayout, frames: pd.DataFrame, index: np.ndarray
) -> None:
    if STATE in frames:
        send_scalars(stream, p.STATE, index, _column(frames, STATE))
    if ACTION not in frames:
        return
    action = _column(frames, ACTION)
    source = _action_source(frames)
    names = layout.action_names or [f"a{j}" for j in range(action.shape[1])]
    for s in p.SOURCES:
        rows = source == s
        for j, name in enumerate(names):
            send_scalars(stream, f"{p.ACTION}/{s}/{name}", index[rows], action[rows, j])
        # A Clear where another source takes over breaks the line instead of bridging the gap.
        for _, stop in spans(rows):
            if stop < len(index):
                stream.set_time(p.FRAME, sequence=int(index[stop]))
                for name in names:
                    stream.log(f"{p.ACTION}/{s}/{name}", rr.Clear(recursive=False))


def _action_source(frames: pd.DataFrame) -> np.ndarray:
    n = len(frames)
    intervention = _column(frames, INTERVENTION).reshape(n).astype(bool) if INTERVENTION in frames else None
    version = _column(frames, POLICY_VERSION).reshape(n) if POLICY_VERSION in frames else np.ones(n)
    source = np.where(version == 0, "hold", "policy")
    if intervention is not None:
        source = np.where(intervention, "operator", source)
    return source


def _send_control_columns(stream: rr.RecordingStream, frames: pd.DataFrame, index: np.ndarray) -> int:
    send_scalars(stream, p.EPISODE, index, frames[EPISODE_INDEX].to_numpy())
    if POLICY_VERSION in frames:
        send_scalars(stream, p.POLICY_VERSION, index, _column(frames, POLICY_VERSION).reshape(-1))
    if INTERVENTION not in frames:
        return 0
    intervention = _column(frames, INTERVENTION).reshape(-1).astype(bool)
    send_scalars(stream, p.INTERVENTION, index, intervention.astype(np.float64))
    count = 0
    for episode, rows in frames.groupby(EPISODE_INDEX).indices.items():
        for start, stop in spans(intervention[rows]):
            first, last = int(index[rows][start]), int(index[rows][stop - 1])
            stream.set_time(p.FRAME, sequence=first)
            text = f"episode {episode}: operator in control, frames {first}..{last} ({stop - start} ticks)"
            stream.log(p.EVENTS, rr.TextLog(text, level="WARN"))
            count += 1
    return count


def _send_labels(
    stream: rr.RecordingStream,
    layout: DatasetLayout,
    frames: pd.DataFrame,
    meta: pd.DataFrame,
    index: np.ndarray,
) -> None:
    values = _column(frames, VALUE).reshape(-1)
    advantages = _column(frames, ADVANTAGE).reshape(-1)
    positive = _column(frames, ADVANTAGE_POSITIVE).reshape(-1).astype(bool)
    task_of = {int(e): first_task(t) for e, t in zip(meta[EPISODE_INDEX], meta["tasks"], strict=True)}
    tasks = np.array([task_of.get(int(e), "") for e in frames[EPISODE_INDEX]])
    thresholds = frame_thresholds(layout.root, tasks, values)
    for episode, rows in frames.groupby(EPISODE_INDEX).indices.items():
        log_labeled_episode(
            stream,
            int(episode),
            values[rows],
            advantages[rows],
            positive[rows],
            None if thresholds is None else thresholds[rows],
            start_frame=int(index[rows][0]),
            prefix="",
            timeline=p.FRAME,
        )
    if INTERVENTION in frames:  # the operator's frames marked on the value curve
        on = _column(frames, INTERVENTION).reshape(-1).astype(bool)
        send_scalars(stream, p.VALUE_INTERVENTION, index[on], values[on])


def _send_images(
    stream: rr.RecordingStream, layout: DatasetLayout, frames: pd.DataFrame, index: np.ndarray
) -> None:
    for key, cam in zip(layout.image_keys, layout.camera_names, strict=True):
        for i, cell in zip(index.tolist(), frames[key].tolist(), strict=True):
            data = cell.get("bytes") if isinstance(cell, dict) else None
            if data:
                stream.set_time(p.FRAME, sequence=i)
                stream.log(f"{p.CAMERA}/{cam}", rr.EncodedImage(contents=data, media_type="image/png"))


def _send_episode_events(stream: rr.RecordingStream, frames: pd.DataFrame, meta: pd.DataFrame) -> None:
    info = meta.set_index(EPISODE_INDEX).to_dict("index") if len(meta) else {}
    for episode, rows in frames.groupby(EPISODE_INDEX).indices.items():
        row = info.get(int(episode), {})
        first, last = int(frames[INDEX].iloc[rows[0]]), int(frames[INDEX].iloc[rows[-1]])
        task = first_task(row.get("tasks"))
        stream.set_time(p.FRAME, sequence=first)
        stream.log(p.EVENTS, rr.TextLog(f"episode {episode} ({row.get(DATA_TYPE, '?')}): {task}"))
        success = bool(row.get(SUCCESS, False))
        text = f"episode {episode} ends: {'success' if success else 'failure'} ({row.get(END_REASON, '?')})"
        stream.set_time(p.FRAME, sequence=last)
        stream.log(p.EVENTS, rr.TextLog(text, level="INFO" if success else "WARN"))
