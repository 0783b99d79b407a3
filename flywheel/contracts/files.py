"""File-name rules shared by everything that writes where the user pointed it."""

from __future__ import annotations

from pathlib import Path


def unused_path(path: Path) -> Path:
    """`path` if nothing is there yet, else the first free `stem-2.ext`, `stem-3.ext`, ...

    For outputs a command may be asked to write again (a recording, a benchmark's JSON): an earlier
    run's file is kept, never rewritten."""
    path = Path(path)
    n = 2
    candidate = path
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate
