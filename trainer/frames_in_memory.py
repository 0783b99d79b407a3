"""A state-only LeRobotDataset held in memory as tensors, batched by indexing.

LeRobotDataset.__getitem__ goes through HF `datasets` per row (deep-copying its Features each call): a
cProfile of the demo's training put 72 ms of each 32-frame step there, against ~100 ms of forward and
backward (unprofiled, the loop went from 138 to ~105 ms a step). Columns are read once, chunks precomputed.
"""

from __future__ import annotations

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

_ROWS_PER_READ = 4096  # rows converted per hf_dataset read: bounds the per-row tensors alive at once


def supports(dataset: LeRobotDataset) -> bool:
    """Whether FramesInMemory gives the same items: no cameras (images or videos), no image transforms,
    and all of the dataset's episodes loaded."""
    if dataset.meta.camera_keys or dataset.meta.video_keys or dataset.meta.image_keys:
        return False
    if dataset.image_transforms is not None:
        return False
    if dataset.episodes is not None and set(dataset.episodes) != set(range(dataset.meta.total_episodes)):
        return False
    return dataset.hf_dataset is not None and len(dataset.hf_dataset) > 0


def already_batched(batch: dict) -> dict:
    """The DataLoader's collate_fn for FramesInMemory: `__getitems__` has already made the batch."""
    return batch


def _names(table, indices: torch.Tensor) -> list[str]:
    """Per row, the name (`table.iloc[i].name`, as LeRobotDataset looks a task up) of its index."""
    name = {i: table.iloc[i].name for i in {int(i) for i in indices.tolist()}}
    return [name[i] for i in indices.tolist()]


class FramesInMemory(torch.utils.data.Dataset):
    """The items of `dataset` (a LeRobotDataset with its delta_timestamps set; see `supports`), the same
    keys, dtypes and shapes as `dataset[i]`, served from tensors. `__getitems__` returns one batched dict,
    what `torch.utils.data.default_collate` makes of the items: use it with `collate_fn=already_batched`."""

    def __init__(self, dataset: LeRobotDataset):
        if not supports(dataset):
            raise ValueError("FramesInMemory: only for a state-only dataset with all of its episodes loaded")
        hf = dataset.hf_dataset  # with LeRobot's own torch transform: items come out as dataset[i] makes them
        n = len(hf)
        chunks: dict[str, list] = {}
        for start in range(0, n, _ROWS_PER_READ):
            for key, values in hf[start : min(n, start + _ROWS_PER_READ)].items():
                tensors = all(isinstance(v, torch.Tensor) for v in values)
                chunks.setdefault(key, []).append(torch.stack(values) if tensors else list(values))
        self.columns: dict[str, torch.Tensor | list] = {
            key: torch.cat(parts)
            if isinstance(parts[0], torch.Tensor)
            else [value for part in parts for value in part]
            for key, parts in chunks.items()
        }
        self.length = n

        self.tasks: list[str] = _names(dataset.meta.tasks, self.columns["task_index"])
        self.subtasks: list[str] | None = None
        if "subtask_index" in dataset.features and dataset.meta.subtasks is not None:
            self.subtasks = _names(dataset.meta.subtasks, self.columns["subtask_index"])

        # Frames beyond an episode's ends repeat its first or last frame and are marked `{key}_is_pad`,
        # as LeRobotDataset._get_query_indices does; indices there are absolute (the `index` column).
        self.query_rows: dict[str, torch.Tensor] = {}  # key -> [n, len(deltas)] rows of self.columns
        self.is_pad: dict[str, torch.Tensor] = {}  # "{key}_is_pad" -> [n, len(deltas)] bool
        # LeRobot 0.6 keeps the delta indices on the dataset's reader (hf_dataset above created it).
        delta_indices = dataset.reader.delta_indices
        if delta_indices is not None:
            absolute = self.columns["index"].numpy().astype(np.int64)
            row_of = np.full(int(absolute.max()) + 1, -1, np.int64)
            row_of[absolute] = np.arange(n)
            episode = self.columns["episode_index"].numpy().astype(np.int64)
            starts = np.asarray(list(dataset.meta.episodes["dataset_from_index"]), np.int64)[episode]
            ends = np.asarray(list(dataset.meta.episodes["dataset_to_index"]), np.int64)[episode]
            for key, deltas in delta_indices.items():
                if key not in self.columns:
                    raise KeyError(
                        f"FramesInMemory: delta_timestamps key {key} is not a column of the dataset"
                    )
                wanted = absolute[:, None] + np.asarray(deltas, np.int64)[None, :]
                clamped = np.clip(wanted, starts[:, None], ends[:, None] - 1)
                self.query_rows[key] = torch.from_numpy(row_of[clamped])
                self.is_pad[f"{key}_is_pad"] = torch.from_numpy(
                    (wanted < starts[:, None]) | (wanted >= ends[:, None])
                )
            if any(bool((rows < 0).any()) for rows in self.query_rows.values()):
                raise ValueError("FramesInMemory: an episode's frames are not all in the dataset")

    def __len__(self) -> int:
        return self.length

    def _gather(self, rows: torch.Tensor | int) -> dict:
        """The columns at `rows` (an int: one item; a LongTensor: a batch), in LeRobotDataset's key order."""
        item: dict = {}
        for key, column in self.columns.items():
            if key in self.query_rows:
                item[key] = column[self.query_rows[key][rows]]
            elif isinstance(column, torch.Tensor):
                item[key] = column[rows]
            else:
                item[key] = column[rows] if isinstance(rows, int) else [column[r] for r in rows.tolist()]
        for key, pad in self.is_pad.items():
            item[key] = pad[rows]
        names = {"task": self.tasks} | ({"subtask": self.subtasks} if self.subtasks is not None else {})
        for key, per_row in names.items():
            item[key] = per_row[rows] if isinstance(rows, int) else [per_row[r] for r in rows.tolist()]
        return item

    def __getitem__(self, idx: int) -> dict:
        idx = int(idx)
        if not -self.length <= idx < self.length:
            raise IndexError(f"FramesInMemory: index {idx} out of range for {self.length} frames")
        # Copies, as LeRobotDataset's items are: a view would let a caller's in-place edit reach the data.
        return {
            key: value.clone() if isinstance(value, torch.Tensor) else value
            for key, value in self._gather(idx % self.length).items()
        }

    def __getitems__(self, indices: list[int]) -> dict:
        return self._gather(torch.as_tensor(indices, dtype=torch.long))
