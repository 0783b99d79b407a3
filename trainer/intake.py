"""Episode intake: which saved episodes the trainer has not trained on yet.

The dataset's own metadata is the truth (a scan of meta/episodes); the daemon's EPISODE_SAVED
notification only says when to look again, so a notification lost while the trainer was down costs
nothing. The set of episodes used is written (atomically) only after an iteration finishes: a
trainer killed mid-iteration redoes that iteration with the same episodes, none lost and none
counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import zmq

from flywheel.contracts.dataset import EPISODE_INDEX, episode_files, read_episode_files
from flywheel.contracts.messages import EpisodeSaved
from flywheel.contracts.protocol import LatestValueSubscriber, MessageType, ProtocolError, Received
from flywheel.contracts.security import Security

log = logging.getLogger(__name__)


def saved_episodes(dataset_root: Path) -> list[int]:
    """Episode indices whose metadata is on disk (complete episodes only)."""
    tables = read_episode_files(episode_files(Path(dataset_root)), columns=[EPISODE_INDEX])
    return sorted(index for _, table in tables for index in table[EPISODE_INDEX].tolist())


@dataclass
class IntakeState:
    used: list[int] = field(default_factory=list)  # episodes some finished iteration trained on
    iterations: int = 0
    last_version: int | None = None


class EpisodeIntake:
    def __init__(self, dataset_root: Path, state_path: Path):
        self.dataset_root = Path(dataset_root)
        self.state_path = Path(state_path)
        self.state = self._load()
        self._news = threading.Event()
        self._subscriber: LatestValueSubscriber | None = None

    def _load(self) -> IntakeState:
        if not self.state_path.exists():
            return IntakeState()
        try:
            return IntakeState(**json.loads(self.state_path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(
                f"{self.state_path}: unreadable trainer state ({e}); move it aside to start over"
            ) from e

    def new_episodes(self) -> list[int]:
        used = set(self.state.used)
        return [i for i in saved_episodes(self.dataset_root) if i not in used] if self._exists() else []

    def all_episodes(self) -> list[int]:
        return saved_episodes(self.dataset_root) if self._exists() else []

    def _exists(self) -> bool:
        return (self.dataset_root / "meta" / "info.json").exists()

    def commit(self, episodes: list[int], version: int | None) -> None:
        """Record a finished iteration (write to a temporary file, then rename: never half-written)."""
        self.state.used = sorted(set(self.state.used) | set(episodes))
        self.state.iterations += 1
        self.state.last_version = version
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=1))
        os.replace(tmp, self.state_path)

    def listen(self, ctx: zmq.Context, address: str, security: Security | None = None) -> None:
        """Wake up on the daemon's EPISODE_SAVED notifications."""
        self._subscriber = LatestValueSubscriber(
            ctx,
            [address],
            [MessageType.EPISODE_SAVED],
            on_message=self._on_saved,
            security=security,
        ).start()

    def _on_saved(self, received: Received) -> None:
        # Only a wake-up: the scan that follows reads the dataset's own metadata, so even a
        # notification this side cannot decode still wakes it.
        try:
            saved = EpisodeSaved.from_message(received.message)
            log.debug("episode %d saved in %s", saved.episode_index, saved.root)
        except ProtocolError as e:
            log.warning("episode_saved: %s", e)
        self._news.set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep until a notification or the timeout (then a scan catches anything missed)."""
        news = self._news.wait(timeout=timeout_s)
        self._news.clear()
        return news

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()
