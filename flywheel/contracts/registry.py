"""The model registry: numbered, immutable policy versions on disk.

    models/
      v0001/   a LeRobot pretrained_model folder (config.json, model.safetensors, processors)
               + manifest.json: version, parent, sha256 of model.safetensors, episodes trained on,
                 metrics, kind, created_at
      v0002/ ...

A version is written into a hidden temporary folder and renamed into place only when complete, so a
crash never leaves a half-written version; an existing version is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass
class Manifest:
    version: int
    sha256: str
    parent: int | None = None
    kind: str = "continuous"  # continuous (warm start) | nightly (from base) | import
    episodes: list[int] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, version: int) -> Path:
        return self.root / f"v{version:04d}"

    def versions(self) -> list[int]:
        if not self.root.exists():
            return []
        found = []
        for p in self.root.iterdir():
            if (
                p.is_dir()
                and p.name.startswith("v")
                and p.name[1:].isdigit()
                and (p / MANIFEST_FILE).exists()
            ):
                found.append(int(p.name[1:]))
        return sorted(found)

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def manifest(self, version: int) -> Manifest:
        path = self.path(version) / MANIFEST_FILE
        if not path.exists():
            raise FileNotFoundError(f"version: v{version:04d} is not in the registry at {self.root}")
        return Manifest(**json.loads(path.read_text()))

    def publish(
        self,
        pretrained_dir: Path,
        *,
        parent: int | None = None,
        kind: str = "continuous",
        episodes: list[int] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Manifest:
        """Copy a LeRobot pretrained_model folder in as the next version."""
        pretrained_dir = Path(pretrained_dir)
        weights = pretrained_dir / WEIGHTS_FILE
        if not weights.exists():
            raise FileNotFoundError(f"pretrained_dir: {pretrained_dir} has no {WEIGHTS_FILE}")
        self.root.mkdir(parents=True, exist_ok=True)
        # After every vNNNN folder, complete or not: a stray one is skipped, never reused or removed.
        version = max(self._numbered_folders(), default=0) + 1
        manifest = Manifest(
            version, sha256_file(weights), parent, kind, sorted(episodes or []), metrics or {}, time.time()
        )
        staging = self.root / f".staging-v{version:04d}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(pretrained_dir, staging)
        (staging / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
        target = self.path(version)
        try:
            # Claim the number first: mkdir fails if anyone made the folder meanwhile, and renaming
            # onto our own empty folder then replaces only that.
            target.mkdir()
        except FileExistsError:
            shutil.rmtree(staging)
            message = f"version: {target} already exists; versions are never overwritten"
            raise FileExistsError(message) from None
        os.rename(staging, target)  # atomic on one filesystem: the version appears complete or not at all
        return manifest

    def _numbered_folders(self) -> list[int]:
        names = [p.name for p in self.root.iterdir()]
        return [int(name[1:]) for name in names if name.startswith("v") and name[1:].isdigit()]

    def verify(self, version: int) -> bool:
        manifest = self.manifest(version)
        return sha256_file(self.path(version) / WEIGHTS_FILE) == manifest.sha256
