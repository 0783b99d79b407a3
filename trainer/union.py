"""The union of a fleet's datasets, as one LeRobot dataset the trainer labels and trains on.

Each arm's episodes arrive in `<fleet.inbox>/<arm>/` (trainer/fleet.py), an append-only LeRobot
dataset of its own. `union_snapshot` takes a consistent snapshot of every arm's copy (hard links, as
for the one-dataset trainer), then joins them with LeRobot's `aggregate_datasets`, arms in sorted
name order: arm `a`'s episodes 0..n-1 become union episodes 0..n-1, arm `b`'s follow, and so on.

Which arm each union episode came from is kept in the union's FLEET_ARMS_FILE
(flywheel/contracts/dataset.py, `read_fleet_arms`). The trainer's intake names an episode by its key
`<arm>/<index>` (the arm's own index), which, unlike a union index, never changes as arms grow.

`aggregate_datasets` (lerobot 0.6.1) keeps every column of the frame files (the flywheel's
`intervention`, `policy_version`, `next.reward`, `next.done`) and of the episode metadata files (the
flywheel's `data_type`, `success`, `policy_versions`, ...): it copies the tables whole and renumbers
only LeRobot's own index columns. It leaves one thing wrong, which is mended here: it writes every
arm's episode rows into one metadata file but keeps each row's `meta/episodes/file_index` of its
source, so the union's rows would point at metadata files that do not exist.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from lerobot.datasets.aggregate import aggregate_datasets

from flywheel.contracts.dataset import (
    EPISODE_INDEX,
    FleetEpisode,
    episode_files,
    fleet_arms_path,
    info_path,
    read_episode_files,
    read_fleet_arms,
    read_json_retrying,
    snapshot,
)

log = logging.getLogger(__name__)

# LeRobot's own columns of an episode metadata row that say which metadata file holds the row.
_META_CHUNK, _META_FILE = "meta/episodes/chunk_index", "meta/episodes/file_index"


class ArmDatasetError(ValueError):
    """An arm's dataset cannot join the union; the message names the arm and the field."""


def episode_key(arm: str, index: int) -> str:
    """An arm's episode as the trainer's intake names it: `<arm>/<index>`."""
    return FleetEpisode(arm, int(index)).key


def parse_episode_key(key: str) -> tuple[str, int]:
    arm, _, index = key.rpartition("/") if isinstance(key, str) else ("", "", "")
    if not arm or not index.isdigit():
        raise ValueError(f"episode key {key!r} is not <arm>/<index>")
    return arm, int(index)


def key_order(key: str) -> tuple[str, int]:
    """Sort keys by arm, then by the arm's episode index as a number (a/2 before a/10)."""
    return parse_episode_key(key)


def arm_roots(inbox: Path) -> dict[str, Path]:
    """The arms' datasets in the inbox, by arm name (sorted): folders holding meta/info.json. Hidden
    folders (a name starting with '.') are left out: they are a transfer's own."""
    inbox = Path(inbox)
    if not inbox.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(inbox.iterdir())
        if p.is_dir() and not p.name.startswith(".") and info_path(p).exists()
    }


def arm_episodes(root: Path) -> list[int]:
    """The arm's complete episodes (metadata on disk, footer written)."""
    tables = read_episode_files(episode_files(root), columns=[EPISODE_INDEX], skip_unfinished=True)
    return sorted(int(i) for _, table in tables for i in table[EPISODE_INDEX].tolist())


def check_arms(roots: dict[str, Path]) -> None:
    """Arms whose datasets cannot be joined (another fps, robot_type or feature than the first arm
    in name order) are refused with an ArmDatasetError naming the arm and the field."""
    names = sorted(roots)
    if not names:
        return
    first = names[0]
    reference = read_json_retrying(info_path(roots[first]))
    for arm in names[1:]:
        info = read_json_retrying(info_path(roots[arm]))
        problem = _difference(reference, info)
        if problem:
            field, mine, theirs = problem
            raise ArmDatasetError(
                f"fleet arm {arm!r}: {field} is {mine}, arm {first!r}'s is {theirs} "
                f"({roots[arm]}); the trainer can only join datasets recorded alike"
            )


def _difference(reference: dict, info: dict) -> tuple[str, str, str] | None:
    for field in ("fps", "robot_type"):
        if info.get(field) != reference.get(field):
            return field, repr(info.get(field)), repr(reference.get(field))
    mine, theirs = info.get("features", {}), reference.get("features", {})
    for key in sorted(set(mine) | set(theirs)):
        if key not in mine:
            return f"features.{key}", "missing", "present"
        if key not in theirs:
            return f"features.{key}", "present", "missing"
        for part in ("dtype", "shape", "names"):
            a, b = mine[key].get(part), theirs[key].get(part)
            if _as_list(a) != _as_list(b):
                return f"features.{key}.{part}", repr(a), repr(b)
    return None


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class UnionSnapshot:
    root: Path  # the union, one LeRobot dataset
    episodes: list[int]  # its episode indices, 0..n-1
    keys: list[str]  # keys[i]: the `<arm>/<index>` of episodes[i]

    def key(self, episode: int) -> str:
        return self.keys[self.episodes.index(episode)]

    @classmethod
    def read(cls, root: Path) -> UnionSnapshot:
        """A union made before (a restarted iteration's), from its arms file."""
        arms = read_fleet_arms(root)
        episodes = sorted(arms)
        return cls(Path(root), episodes, [arms[e].key for e in episodes])


def union_snapshot(arm_roots: dict[str, Path], dest: Path, arms_dir: Path | None = None) -> UnionSnapshot:
    """A consistent snapshot of each arm's dataset (into `arms_dir/<arm>`, by default next to `dest`)
    and their union as one LeRobot dataset at `dest`, arms in sorted name order, with the arms file
    saying each union episode's arm and own index. Arms with no complete episode yet are left out.

    Neither `dest` nor `arms_dir` may exist; on any error both are removed again (nothing half-made
    is left). Incompatible arms are refused (ArmDatasetError naming the arm and the field)."""
    dest = Path(dest)
    arms_dir = Path(arms_dir) if arms_dir is not None else dest.with_name(f"{dest.name}-arms")
    for path in (dest, arms_dir):
        if path.exists():
            raise FileExistsError(f"union_snapshot: {path} exists")
    try:
        return _union(dict(sorted(arm_roots.items())), dest, arms_dir)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(arms_dir, ignore_errors=True)
        raise


def _union(roots: dict[str, Path], dest: Path, arms_dir: Path) -> UnionSnapshot:
    check_arms(roots)
    snaps: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for arm, root in roots.items():
        snap = arms_dir / arm
        episodes = snapshot(root, snap)
        if not episodes:
            continue
        if episodes != list(range(len(episodes))):
            gap = next(i for i, e in enumerate(episodes) if e != i)
            raise ArmDatasetError(
                f"fleet arm {arm!r}: episode_index {gap} is missing from {root} (it holds "
                f"{len(episodes)} episodes up to {episodes[-1]}); an arm's copy holds episodes 0..n-1"
            )
        snaps[arm], counts[arm] = snap, len(episodes)
    if not snaps:
        raise ArmDatasetError(f"fleet: no arm has a complete episode ({', '.join(roots) or 'no arm'})")
    with _scratch_datasets_cache(dest.with_name(f".{dest.name}-datasets-cache")):
        aggregate_datasets(
            [f"fleet/{arm}" for arm in snaps],
            "fleet/union",
            roots=list(snaps.values()),
            aggr_root=dest,
            concatenate_data=False,  # one union data file per arm data file: no rewrite of earlier ones
        )
    _mend_metadata_file_indices(dest)
    rows, first = [], 0
    for arm, count in counts.items():
        rows += [{"episode_index": first + i, "arm": arm, "arm_episode_index": i} for i in range(count)]
        first += count
    arms = {arm: {"root": str(Path(roots[arm]).resolve()), "episodes": counts[arm]} for arm in counts}
    fleet_arms_path(dest).write_text(json.dumps({"arms": arms, "episodes": rows}, indent=1))
    union = UnionSnapshot.read(dest)
    total = json.loads(info_path(dest).read_text())["total_episodes"]
    if union.episodes != list(range(total)):  # the arms file and the union must tell the same story
        n = len(union.episodes)
        raise RuntimeError(f"union_snapshot: {dest} holds {total} episodes, its arms file {n}")
    log.info("fleet union of %s: %d episodes", ", ".join(f"{a} ({n})" for a, n in counts.items()), total)
    return union


@contextlib.contextmanager
def _scratch_datasets_cache(folder: Path) -> Iterator[None]:
    """aggregate_datasets reads frame files holding images, and every metadata file, through
    datasets.Dataset.from_parquet, which writes an Arrow copy of each into the Hugging Face cache
    (~/.cache/huggingface/datasets) and never removes it: once per iteration, the whole union again
    (the trouble flywheel/contracts/dataset.py's _with_latest_episode avoids for the recorder). Here
    the copies go to a scratch folder of the trainer's own, removed when the union is made."""
    previous = datasets.config.HF_DATASETS_CACHE
    shutil.rmtree(folder, ignore_errors=True)
    datasets.config.HF_DATASETS_CACHE = folder
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = previous
        shutil.rmtree(folder, ignore_errors=True)


def _mend_metadata_file_indices(root: Path) -> None:
    """Point each episode row at the metadata file that holds it (aggregate_datasets keeps the
    source's file index on rows it writes into one file)."""
    for path in episode_files(root):
        chunk, file = _chunk_file(path)
        table = pq.read_table(path)
        if set(table[_META_CHUNK].to_pylist()) == {chunk} and set(table[_META_FILE].to_pylist()) == {file}:
            continue
        for name, value in ((_META_CHUNK, chunk), (_META_FILE, file)):
            column = pa.array([value] * table.num_rows, table.schema.field(name).type)
            table = table.set_column(table.schema.get_field_index(name), name, column)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)


def _chunk_file(path: Path) -> tuple[int, int]:
    """(chunk, file) of `.../chunk-CCC/file-FFF.parquet`."""
    return int(path.parent.name.removeprefix("chunk-")), int(path.stem.removeprefix("file-"))
