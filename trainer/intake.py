"""Episode intake: which saved episodes the trainer has not trained on yet.

The dataset's own metadata is the truth (a scan of meta/episodes); the daemon's EPISODE_SAVED
notification only says when to look again, so a notification lost while the trainer was down costs
nothing. The set of episodes used is written (atomically) only after an iteration finishes: a
trainer killed mid-iteration redoes that iteration with the same episodes, none lost and none
counted twice.

With a fleet (`--fleet.bind`, trainer/fleet.py) the episodes are those of every arm's dataset in the
inbox, named by their key `<arm>/<index>` (trainer/union.py), and the wake-up is the fleet server's
`on_episode(arm, index)`. State files (state.json):

    one dataset   {"used": [0, 1, ...], "iterations": n, "last_version": v}       (as before)
    fleet         {"used_keys": ["a/0", "b/0", ...], "iterations": n, "last_version": v}
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
from trainer.union import arm_episodes, arm_roots, episode_key, key_order, parse_episode_key

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
    # A fleet's: the keys (`<arm>/<index>`) of the episodes some finished iteration trained on.
    used_keys: list[str] | None = None

    def as_dict(self) -> dict:
        """What state.json holds: a fleet's state has used_keys and no used, a one-dataset state the
        three fields it always had."""
        state = asdict(self)
        if self.used_keys is None:
            del state["used_keys"]
        else:
            del state["used"]
        return state


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
            state = IntakeState(**json.loads(self.state_path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(
                f"{self.state_path}: unreadable trainer state ({e}); move it aside to start over"
            ) from e
        self._check_kind(state)
        return state

    def _check_kind(self, state: IntakeState) -> None:
        if state.used_keys is not None:
            raise ValueError(
                f"{self.state_path}: the state of a fleet trainer (used_keys), not of one dataset; "
                "give the trainer its own work_dir"
            )

    def new_episodes(self) -> list:
        used = set(self._used())
        return [e for e in self.all_episodes() if e not in used]

    def all_episodes(self) -> list:
        return saved_episodes(self.dataset_root) if self._exists() else []

    def _used(self) -> list:
        return self.state.used

    def _exists(self) -> bool:
        return (self.dataset_root / "meta" / "info.json").exists()

    def commit(self, episodes: list, version: int | None) -> None:
        """Record a finished iteration (write to a temporary file, then rename: never half-written).
        `episodes`: indices of the one dataset, or a fleet's keys."""
        self._add_used(episodes)
        self.state.iterations += 1
        self.state.last_version = version
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.as_dict(), indent=1))
        os.replace(tmp, self.state_path)

    def _add_used(self, episodes: list) -> None:
        self.state.used = sorted(set(self.state.used) | {int(e) for e in episodes})

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

    def on_episode(self, arm: str, index: int) -> None:
        """The fleet server's callback (an arm's episode committed to the inbox): only a wake-up."""
        log.debug("episode %s arrived", episode_key(arm, index))
        self._news.set()

    def wake(self) -> None:
        """End a `wait` now (the trainer is stopping)."""
        self._news.set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep until a notification or the timeout (then a scan catches anything missed)."""
        news = self._news.wait(timeout=timeout_s)
        self._news.clear()
        return news

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()


class FleetIntake(EpisodeIntake):
    """The intake of a fleet: every arm's episodes in `inbox`, by key `<arm>/<index>`."""

    def __init__(self, inbox: Path, state_path: Path):
        self.inbox = Path(inbox)
        super().__init__(self.inbox, state_path)
        if self.state.used_keys is None:
            self.state.used_keys = []

    def _check_kind(self, state: IntakeState) -> None:
        if state.used_keys is None and state.used:
            raise ValueError(
                f"{self.state_path}: the state of a one-dataset trainer (used episodes {state.used[:3]}...), "
                "not of a fleet; give the fleet trainer its own work_dir"
            )

    def all_episodes(self) -> list[str]:
        arms = arm_roots(self.inbox)
        keys = [episode_key(arm, i) for arm, root in arms.items() for i in arm_episodes(root)]
        return sorted(keys, key=key_order)

    def new_per_arm(self) -> dict[str, int]:
        """How many new episodes each arm has (arms with none left out)."""
        counts: dict[str, int] = {}
        for key in self.new_episodes():
            arm = parse_episode_key(key)[0]
            counts[arm] = counts.get(arm, 0) + 1
        return counts

    def _used(self) -> list[str]:
        return self.state.used_keys or []

    def _add_used(self, episodes: list) -> None:
        for key in episodes:
            parse_episode_key(key)  # a union index here would be a bug: refuse it before writing
        self.state.used_keys = sorted(set(self._used()) | set(episodes), key=key_order)
