"""Moving files between machines in chunks, resumably (docs/protocol.md "Fleet").

Both directions of the fleet use these primitives: an arm's episodes go to the trainer, the
trainer's registry versions go to the arms. A file is sent in chunks of at most `chunk_bytes`, each
at an explicit offset; the receiver appends a chunk only when its offset is the number of bytes it
already holds, so a chunk repeated after a timeout (or after a restart of either side) is never
written twice, and the sender resumes from what the receiver says it holds. A complete file is
checked against its sha256 before it is renamed into place; a mismatch discards the partial file.

Nothing here holds a whole file in memory: files are read and hashed by seek/read, chunk by chunk.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flywheel.contracts.protocol import ProtocolError
from flywheel.contracts.registry import sha256_file

PART_SUFFIX = ".part"
_ARM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_BLOCK = 1 << 20


class TransferRefused(ValueError):
    """A file or chunk that is not accepted (its hash, its size, its offset); names the value."""


def check_arm(name: object, field: str = "arm") -> str:
    """An arm's name: 1-64 of A-Z a-z 0-9 _ - (it names a folder of the trainer's inbox)."""
    if not isinstance(name, str) or not _ARM_NAME.fullmatch(name):
        raise ProtocolError(f"{field}: {str(name)[:80]!r} is not an arm name ([A-Za-z0-9_-]{{1,64}})")
    return name


def check_sha256(value: object, field: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ProtocolError(f"{field}: {str(value)[:80]!r} is not a lowercase sha256 hex digest")
    return value


def check_relative(path: object, field: str = "file", under: tuple[str, ...] | None = None) -> str:
    """A relative POSIX path that stays inside its root: no `..`, no absolute path, no empty or `.`
    part, no backslash, not a `.part` file; with `under`, its first part must be one of those."""
    if not isinstance(path, str) or not path or len(path) > 512:
        raise ProtocolError(f"{field}: {str(path)[:80]!r} is not a relative path")
    parts = path.split("/")
    bad = (
        path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in parts)
        or path.endswith(PART_SUFFIX)
        or PurePosixPath(path).is_absolute()
    )
    if bad:
        raise ProtocolError(f"{field}: {path[:80]!r} is not a relative path inside the folder")
    if under is not None and (len(parts) < 2 or parts[0] not in under):
        raise ProtocolError(f"{field}: {path[:80]!r} is not under {' or '.join(f'{u}/' for u in under)}")
    return path


@dataclass(frozen=True)
class FileEntry:
    """A file to transfer: its path relative to the folder it is in, its size and sha256."""

    path: str
    size: int
    sha256: str

    def fields(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def of(cls, root: Path, path: str) -> FileEntry:
        """The entry of `root/path`, hashed from disk."""
        size, sha = size_and_sha256(Path(root) / path)
        return cls(path, size, sha)


def size_and_sha256(path: Path) -> tuple[int, str]:
    return Path(path).stat().st_size, sha256_file(path)


def folder_entries(root: Path) -> list[FileEntry]:
    """Every file under `root` (recursively, in path order), hashed: what a registry version is."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [FileEntry.of(root, p.relative_to(root).as_posix()) for p in files]


def read_chunk(path: Path, offset: int, length: int) -> bytes:
    """`length` bytes of `path` from `offset` (fewer at its end), by seek/read."""
    if offset < 0 or length < 0:
        raise TransferRefused(f"offset/length: {offset}/{length} must not be negative")
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _hash_prefix(path: Path, size: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = size
        while remaining > 0 and (block := f.read(min(_HASH_BLOCK, remaining))):
            digest.update(block)
            remaining -= len(block)
    return digest


class Receiver:
    """Receives files into `root` chunk by chunk: `<root>/<path>.<sha256 prefix>.part` until
    complete, then checked against its sha256 and renamed to `<root>/<path>`. The running hash of
    each part is kept between chunks (re-read from the part after a restart), so completing a file
    reads nothing again. `root` is the receiver's own scratch folder: a file announced again with
    another sha256 (the sender's copy changed, e.g. a dataset's info.json) starts over."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._hashes: dict[Path, tuple[int, hashlib._Hash]] = {}  # part -> (bytes hashed, hash)
        self._complete: dict[Path, str] = {}  # complete file -> its sha256

    def part(self, entry: FileEntry) -> Path:
        return self.root / f"{entry.path}.{entry.sha256[:16]}{PART_SUFFIX}"

    def receive(self, entry: FileEntry, offset: int, data: bytes | memoryview) -> int:
        """Append `data` at `offset` to the part of `entry`, only when `offset` is the part's
        current size (otherwise nothing is written: a repeated or early chunk). Returns the bytes
        held afterwards (an empty `data` only asks). When the part reaches `entry.size` it is
        checked and renamed complete; TransferRefused (the part removed) when its sha256 differs,
        or for a chunk beyond the size."""
        final, part = self.root / entry.path, self.part(entry)
        if final.exists():
            if final.stat().st_size == entry.size and self.complete_sha256(final) == entry.sha256:
                return entry.size  # received before (a repeat after a lost reply, or a restart)
            self.discard(entry.path)  # another version of the file: this one replaces it
        for stale in _parts_of(final):
            if stale != part:
                stale.unlink(missing_ok=True)
                self._hashes.pop(stale, None)
        held = part.stat().st_size if part.exists() else 0
        if offset != held or (not data and held < entry.size):
            return held  # not the next chunk: the sender resumes from `held`
        if offset + len(data) > entry.size:
            raise TransferRefused(
                f"offset: {offset} + {len(data)} bytes exceeds the size {entry.size} of {entry.path}"
            )
        part.parent.mkdir(parents=True, exist_ok=True)
        hashed = self._hashes.get(part)
        if hashed is None or hashed[0] != held:
            hashed = (held, _hash_prefix(part, held) if held else hashlib.sha256())
        with open(part, "ab") as f:
            f.write(data)
        digest = hashed[1]
        digest.update(data)
        held += len(data)
        self._hashes[part] = (held, digest)
        if held < entry.size:
            return held
        del self._hashes[part]
        actual = digest.hexdigest()
        if actual != entry.sha256:
            part.unlink()
            raise TransferRefused(
                f"sha256: {entry.path} hashes to {actual}, not the announced {entry.sha256}; discarded"
            )
        os.replace(part, final)
        self._complete[final] = actual
        return held

    def complete_sha256(self, final: Path) -> str:
        """The sha256 of a complete file (known when it was received here, else read)."""
        known = self._complete.get(final)
        if known is None:
            known = self._complete[final] = sha256_file(final)
        return known

    def discard(self, path: str) -> None:
        """Forget the file `path`, complete or partial."""
        final = self.root / path
        final.unlink(missing_ok=True)
        self._complete.pop(final, None)
        for part in _parts_of(final):
            part.unlink(missing_ok=True)
            self._hashes.pop(part, None)


def _parts_of(final: Path) -> list[Path]:
    """The part files of `final` (one per sha256 it was announced with)."""
    if not final.parent.is_dir():
        return []
    prefix = final.name + "."
    return [p for p in final.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(PART_SUFFIX)]


def download(dest: Path, entry: FileEntry, fetch, chunk_bytes: int) -> int:
    """Fetch `entry` into the file `dest`, resuming from the bytes already there, and check its
    sha256. `fetch(offset, length) -> bytes` reads the remote file. A local file longer than the
    entry, or complete with another hash, is started again. Returns the bytes fetched; raises
    TransferRefused (the file removed) when the result does not hash to `entry.sha256`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = dest.stat().st_size if dest.exists() else 0
    if have > entry.size:
        dest.unlink()
        have = 0
    digest = _hash_prefix(dest, have) if have else hashlib.sha256()
    fetched = 0
    with open(dest, "ab") as f:
        while have < entry.size:
            data = fetch(have, min(chunk_bytes, entry.size - have))
            if not data:
                raise TransferRefused(f"{entry.path}: the sender sent no bytes at offset {have}")
            if have + len(data) > entry.size:
                raise TransferRefused(f"{entry.path}: the sender sent bytes beyond the size {entry.size}")
            f.write(data)
            digest.update(data)
            have += len(data)
            fetched += len(data)
    actual = digest.hexdigest()
    if actual != entry.sha256:
        dest.unlink()
        raise TransferRefused(f"sha256: {entry.path} hashes to {actual}, not {entry.sha256}; discarded")
    return fetched
