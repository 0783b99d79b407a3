"""File-name rules shared by everything that writes where the user pointed it."""

from __future__ import annotations

import os
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


def write_text_atomically(path: Path, text: str) -> None:
    """Whole or not at all: the text goes to a hidden `.<name>.tmp` beside `path`, which then replaces
    it, so a process killed mid-write never leaves a file that cannot be read back."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
