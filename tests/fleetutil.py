"""What the fleet tests across network namespaces share: the CLI as a process, and the episodes a
dataset holds complete, to compare an arm's files with the trainer's inbox."""

import hashlib
import sys
from pathlib import Path

from flywheel.contracts.dataset import data_file, episode_files, read_episode_files


def flywheel(*args: str) -> list[str]:
    return [sys.executable, "-m", "flywheel.cli", *args]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def complete_episodes(root: Path) -> dict[int, tuple[str, str]]:
    """index -> (data file, meta/episodes file), both relative to root: the complete episodes."""
    out = {}
    for path, table in read_episode_files(
        episode_files(root),
        columns=["episode_index", "data/chunk_index", "data/file_index"],
        skip_unfinished=True,
    ):
        for _, row in table.iterrows():
            data = data_file(int(row["data/chunk_index"]), int(row["data/file_index"])).as_posix()
            index = int(row["episode_index"])
            assert index not in out, f"{root}: episode {index} twice"
            out[index] = (data, path.relative_to(root).as_posix())
    return out
