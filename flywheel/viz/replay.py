"""Replay a recorded or labeled flywheel dataset into Rerun, with the live view's layout.

Reads the parquet files directly (like flywheel/recap/source.py) so a replay needs no LeRobot
dataset object, and sends whole columns at once (`send_columns`): a 100k-frame dataset replays in
seconds instead of minutes of per-frame `log` calls.

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
import pyarrow.parquet as pq
import rerun as rr

from flywheel.viz import paths as p

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("value", "advantage", "advantage_positive")
LABELS_FILE = "meta/recap_labels.json"


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
    info_path = Path(root) / "meta" / "info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"dataset.root: {root} holds no LeRobot dataset (no meta/info.json)")
    features = json.loads(info_path.read_text())["features"]
    images = [k for k, v in features.items() if k.startswith("observation.images.")]
    return DatasetLayout(
        root=Path(root),
        fps=int(json.loads(info_path.read_text()).get("fps", 30)),
        state_names=list(features.get("observation.state", {}).get("names") or []),
        action_names=list(features.get("action", {}).get("names") or []),
        image_keys=[k for k in images if features[k]["dtype"] == "image"],
        video_keys=[k for k in images if features[k]["dtype"] == "video"],
        labeled=all(c in features for c in LABEL_COLUMNS),
    )


def read_frames(layout: DatasetLayout, columns: list[str]) -> pd.DataFrame:
    files = sorted((layout.root / "data").glob("*/*.parquet"))
    if not files:
        raise FileNotFoundError(f"dataset.root: no frame files under {layout.root}/data")
    names = set(pq.read_schema(files[0]).names)
    wanted = [c for c in columns if c in names]
    frames = pd.concat([pq.read_table(f, columns=wanted).to_pandas() for f in files], ignore_index=True)
    return frames.sort_values("index", kind="stable").reset_index(drop=True)


def read_episodes(root: Path) -> pd.DataFrame:
    files = sorted((Path(root) / "meta" / "episodes").glob("*/*.parquet"))
    keep = ["episode_index", "tasks", "length", "data_type", "success", "end_reason", "dataset_from_index"]
    tables = [pq.read_table(f).to_pandas() for f in files]
    episodes = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=keep)
    return episodes[[c for c in keep if c in episodes]].sort_values("episode_index").reset_index(drop=True)


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

    thresholds = Thresholds.from_labels(Path(root) / LABELS_FILE)
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
    columns = ["index", "episode_index", "frame_index", "observation.state", "action", "intervention"]
    columns += ["policy_version", *LABEL_COLUMNS, *layout.image_keys]
    frames = read_frames(layout, columns)
    if episodes is not None:
        frames = frames[frames["episode_index"].isin(episodes)].reset_index(drop=True)
    meta = read_episodes(layout.root)
    index = frames["index"].to_numpy(np.int64)
    _send_robot_columns(stream, layout, frames, index)
    n_spans = _send_control_columns(stream, frames, index)
    if layout.labeled:
        _send_labels(stream, layout, frames, meta, index)
    _send_images(stream, layout, frames, index)
    _send_episode_events(stream, frames, meta)
    for key in layout.video_keys:
        log.warning("replay: %s is stored as video and is not replayed", key)
    return ReplaySummary(int(frames["episode_index"].nunique()), len(frames), layout.labeled, n_spans)


def _send_robot_columns(
    stream: rr.RecordingStream, layout: DatasetLayout, frames: pd.DataFrame, index: np.ndarray
) -> None:
    if "observation.state" in frames:
        send_scalars(stream, p.STATE, index, _column(frames, "observation.state"))
    if "action" not in frames:
        return
    action = _column(frames, "action")
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
    intervention = (
        _column(frames, "intervention").reshape(n).astype(bool) if "intervention" in frames else None
    )
    version = _column(frames, "policy_version").reshape(n) if "policy_version" in frames else np.ones(n)
    source = np.where(version == 0, "hold", "policy")
    if intervention is not None:
        source = np.where(intervention, "operator", source)
    return source


def _send_control_columns(stream: rr.RecordingStream, frames: pd.DataFrame, index: np.ndarray) -> int:
    send_scalars(stream, p.EPISODE, index, frames["episode_index"].to_numpy())
    if "policy_version" in frames:
        send_scalars(stream, p.POLICY_VERSION, index, _column(frames, "policy_version").reshape(-1))
    if "intervention" not in frames:
        return 0
    intervention = _column(frames, "intervention").reshape(-1).astype(bool)
    send_scalars(stream, p.INTERVENTION, index, intervention.astype(np.float64))
    count = 0
    for episode, rows in frames.groupby("episode_index").indices.items():
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
    values = _column(frames, "value").reshape(-1)
    advantages = _column(frames, "advantage").reshape(-1)
    positive = _column(frames, "advantage_positive").reshape(-1).astype(bool)
    task_of = {int(e): first_task(t) for e, t in zip(meta["episode_index"], meta["tasks"], strict=True)}
    tasks = np.array([task_of.get(int(e), "") for e in frames["episode_index"]])
    thresholds = frame_thresholds(layout.root, tasks, values)
    for episode, rows in frames.groupby("episode_index").indices.items():
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
    if "intervention" in frames:  # the operator's frames marked on the value curve
        on = _column(frames, "intervention").reshape(-1).astype(bool)
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
    info = meta.set_index("episode_index").to_dict("index") if len(meta) else {}
    for episode, rows in frames.groupby("episode_index").indices.items():
        row = info.get(int(episode), {})
        first, last = int(frames["index"].iloc[rows[0]]), int(frames["index"].iloc[rows[-1]])
        task = first_task(row.get("tasks"))
        stream.set_time(p.FRAME, sequence=first)
        stream.log(p.EVENTS, rr.TextLog(f"episode {episode} ({row.get('data_type', '?')}): {task}"))
        success = bool(row.get("success", False))
        text = f"episode {episode} ends: {'success' if success else 'failure'} ({row.get('end_reason', '?')})"
        stream.set_time(p.FRAME, sequence=last)
        stream.log(p.EVENTS, rr.TextLog(text, level="INFO" if success else "WARN"))
