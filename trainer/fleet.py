"""The trainer's side of a fleet: arms on other computers send their episodes here and fetch the
trainer's weights from here, over one ZeroMQ endpoint (docs/protocol.md "Fleet").

The arms connect to the trainer (an arm behind NAT or on a laptop works), each through its uplink
(`flywheel uplink`, flywheel/uplink/), and every exchange is one of the uplink's requests on this
one REP socket, each idempotent: a request repeated after a timeout or a restart of either side
changes nothing twice.

    inbox/<arm>/                      that arm's episodes 0..n-1: a LeRobot dataset, append-only
    inbox/.incoming/<arm>/<episode>/  the files of the episode being received (`.part` until complete)

An episode enters `inbox/<arm>/` on its commit: its data file first, then tasks.parquet and
stats.json (replaced atomically; tasks only ever gain rows), then its meta/episodes file (from that
moment the episode exists), then info.json with the totals of the episodes held. What the inbox
holds is read from the inbox itself (its complete meta/episodes files) at start, so a trainer
killed between any two steps carries on where it stopped, and a commit repeated for an episode
already held is answered as a success without touching anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pandas as pd
import zmq

from flywheel.contracts.dataset import (
    EPISODE_INDEX,
    EPISODES_DIR,
    INFO_FILE,
    STATS_FILE,
    TASKS_FILE,
    data_file,
    episode_files,
    read_episode_files,
    write_info_with_totals,
)
from flywheel.contracts.fleet import (
    ArmPoll,
    ChunkAck,
    DeployOutcome,
    EpisodeChunk,
    EpisodeCommit,
    FleetError,
    FleetState,
    WeightsChunk,
    WeightsFetch,
)
from flywheel.contracts.protocol import (
    MAX_ARRAY_BYTES,
    MAX_HEADER_BYTES,
    Message,
    MessageType,
    ProtocolError,
    decode,
    encode,
)
from flywheel.contracts.registry import WEIGHTS_FILE, ModelRegistry, sha256_file
from flywheel.contracts.security import Security, secure_server
from flywheel.contracts.transfer import FileEntry, Receiver, folder_entries, read_chunk

log = logging.getLogger(__name__)

INCOMING = ".incoming"


@dataclass
class FleetConfig:
    # The address the trainer binds for its arms (None: one machine, the daemon's dataset is read
    # from disk and deploys go to the daemon's own endpoint, as before). Beyond loopback it needs
    # CurveZMQ keys (--wire.keys_dir).
    bind: str | None = None
    # The arms' datasets as received: inbox/<arm>/ is an append-only LeRobot dataset holding that
    # arm's complete episodes 0..n-1, each exactly once.
    inbox: Path = Path("outputs/fleet")
    # Bytes per transfer chunk (episodes and weights alike).
    chunk_bytes: int = 4 << 20
    # A deploy waits this long for every connected arm's report.
    deploy_timeout_s: float = 600.0
    # An arm not heard from for this long is no longer connected (not waited for by a deploy).
    arm_timeout_s: float = 10.0
    # Deploy gated versions to the arms (each uplink fetches the weights and hands them to its
    # daemon). false when the arms' policy runs on a policy server (`flywheel run --policy.server=`):
    # the trainer then deploys to that server, --wire.deploy=<its deploy address>
    # --wire.deploy_key=policy_server, and the arms only send episodes.
    deploy_to_arms: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.chunk_bytes <= MAX_ARRAY_BYTES:
            raise ValueError(f"fleet.chunk_bytes: {self.chunk_bytes} is not in 1..{MAX_ARRAY_BYTES}")


@dataclass(frozen=True)
class ArmReport:
    """What one arm said about a deploy."""

    arm: str
    status: str  # swapped | queued | rejected | unreachable (not heard from before the timeout)
    acting_version: int | None
    reason: str = ""


class CommitRefused(ValueError):
    """An episode commit that is not taken; the text names the field and the value."""


@dataclass
class _Arm:
    last_seen: float = -math.inf  # time.monotonic() of its last request
    acting_version: int | None = None
    report: DeployOutcome | None = None


@dataclass
class _Held:
    """What the inbox holds of one arm (read from the inbox at start, then kept up to date)."""

    episodes: int = 0  # episodes 0..episodes-1
    frames: int = 0
    receivers: dict[int, Receiver] = field(default_factory=dict)


class FleetServer:
    """Serves the arms on `cfg.bind` (a thread of its own): takes their episodes into `cfg.inbox`,
    hands out registry versions in chunks, and carries deploys to every connected arm."""

    def __init__(
        self,
        cfg: FleetConfig,
        registry_root: Path,
        security=None,  # flywheel.contracts.security.Security of the trainer, or None on loopback
        on_episode=None,  # Callable[[str, int], None]: called (arm, episode_index) after each commit
        ctx: zmq.Context | None = None,
    ):
        if cfg.bind is None:
            raise ValueError("fleet.bind: None; a FleetServer needs an address to bind")
        self.cfg = cfg
        self.inbox = Path(cfg.inbox)
        self.registry = ModelRegistry(registry_root)
        self._security: Security | None = security
        self._on_episode = on_episode
        self._ctx = ctx or zmq.Context.instance()
        self._cond = threading.Condition()
        self._arms: dict[str, _Arm] = {}
        self._held: dict[str, _Held] = {}
        self._target: int | None = None
        self._served: dict[int, tuple[FileEntry, ...]] = {}  # version -> its files
        self._stop = threading.Event()
        self._interrupted = threading.Event()  # a deploy() under way stops waiting for reports
        self._bound = threading.Event()
        self._bind_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.refused = 0

    # --- life --------------------------------------------------------------------------------
    def start(self) -> FleetServer:
        self.inbox.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.inbox.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                self._recover(folder.name)
        self._stop.clear()
        self._interrupted.clear()
        self._bound.clear()
        self._thread = threading.Thread(target=self._serve, name="fleet-server", daemon=True)
        self._thread.start()
        self._bound.wait(timeout=10.0)
        if self._bind_error is not None:
            raise self._bind_error
        log.info("fleet: serving arms on %s, inbox %s", self.cfg.bind, self.inbox)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def interrupt(self) -> None:
        """End a deploy()'s wait for reports within a second (the trainer is stopping): the arms
        that have not reported are returned `unreachable`. Safe from a signal handler."""
        self._interrupted.set()

    def arms(self) -> list[str]:
        """The arms with a dataset in the inbox."""
        if not self.inbox.exists():
            return []
        return sorted(p.name for p in self.inbox.iterdir() if p.is_dir() and (p / INFO_FILE).exists())

    def held(self, arm: str) -> int:
        """How many episodes of `arm` the inbox holds (episodes 0..held-1)."""
        with self._cond:
            return self._held_of(arm).episodes

    def set_target(self, version: int) -> None:
        """Make `version` the one every arm should act with, without waiting for the arms: a restarted
        trainer's acting version, so an arm that connects later is brought to it too."""
        files = self._checked_files(version)
        with self._cond:
            self._served[version] = files
            self._target = version

    def deploy(self, version: int, timeout_s: float | None = None) -> dict[str, ArmReport]:
        """Make `version` the fleet's target and wait until every connected arm reports on it."""
        timeout_s = self.cfg.deploy_timeout_s if timeout_s is None else timeout_s
        self.set_target(version)
        now = time.monotonic()
        with self._cond:
            waiting = sorted(a for a, s in self._arms.items() if now - s.last_seen <= self.cfg.arm_timeout_s)
            log.info("fleet: deploy v%04d to %s", version, waiting or "no connected arm")
            deadline = now + timeout_s
            while True:
                pending = [a for a in waiting if not self._reported(a, version)]
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0 or self._interrupted.is_set():
                    break
                self._cond.wait(min(remaining, 1.0))
            reports = {}
            for arm in sorted(set(self._arms) | set(self.arms())):
                state = self._arms.get(arm, _Arm())
                if self._reported(arm, version):
                    assert state.report is not None
                    report = ArmReport(arm, state.report.status, state.acting_version, state.report.reason)
                else:
                    reason = f"no report on v{version:04d} within {timeout_s:g} s"
                    if self._interrupted.is_set():
                        reason = f"no report on v{version:04d} before the trainer stopped"
                    report = ArmReport(arm, "unreachable", state.acting_version, reason)
                reports[arm] = report
                log.info(
                    "fleet: %s: v%04d %s (acting %s)%s",
                    arm,
                    version,
                    report.status,
                    report.acting_version,
                    f": {report.reason}" if report.reason else "",
                )
        return reports

    def _checked_files(self, version: int) -> tuple[FileEntry, ...]:
        """The files of a registry version, its weights checked against its manifest."""
        manifest = self.registry.manifest(version)  # FileNotFoundError naming the version
        files = tuple(folder_entries(self.registry.path(version)))
        weights = next((e for e in files if e.path == WEIGHTS_FILE), None)
        if weights is None or weights.sha256 != manifest.sha256:
            actual = None if weights is None else weights.sha256
            raise ValueError(
                f"version: v{version:04d}'s {WEIGHTS_FILE} hashes to {actual}, its manifest says "
                f"{manifest.sha256}; not deployed"
            )
        return files

    def _reported(self, arm: str, version: int) -> bool:
        report = self._arms[arm].report if arm in self._arms else None
        return report is not None and report.version == version

    # --- the socket --------------------------------------------------------------------------
    def _serve(self) -> None:
        socket = self._ctx.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES + MAX_ARRAY_BYTES)
        try:
            secure_server(socket, self.cfg.bind, self._security)
            _bind(socket, self.cfg.bind)
        except BaseException as e:
            self._bind_error = e
            socket.close()
            self._bound.set()
            return
        self._bound.set()
        try:
            while not self._stop.is_set():
                if not socket.poll(timeout=100):
                    continue
                reply = self.handle(socket.recv_multipart())
                socket.send_multipart(encode(reply), copy=False)
        finally:
            socket.close()

    def handle(self, frames: list[bytes]) -> Message:
        """The reply to one request (whatever it holds: a refusal is a FLEET_ERROR reply)."""
        try:
            msg = decode(frames)
            handler = self._handlers.get(msg.type)
            if handler is None:
                raise ProtocolError(f"type: {msg.type} is not a request the trainer's fleet endpoint takes")
            return handler(self, msg).to_message()
        except (ValueError, OSError) as e:  # ProtocolError, TransferRefused, CommitRefused
            self.refused += 1
            log.warning("fleet: refused: %s", e)
            return FleetError(str(e)).to_message()
        except Exception as e:  # whatever a request does, the serving thread lives on
            self.refused += 1
            log.exception("fleet: request failed")
            return FleetError(f"internal error: {e!r}").to_message()

    def _seen(self, arm: str) -> _Arm:
        with self._cond:
            state = self._arms.setdefault(arm, _Arm())
            state.last_seen = time.monotonic()
            return state

    def _state(self, arm: str) -> FleetState:
        with self._cond:
            target = self._target
            files = self._served.get(target, ()) if target is not None else ()
            return FleetState(self._held_of(arm).episodes, target, files)

    # --- requests ----------------------------------------------------------------------------
    def _poll(self, msg: Message) -> FleetState:
        poll = ArmPoll.from_message(msg)
        with self._cond:
            state = self._seen(poll.arm)
            new = poll.report is not None and poll.report != state.report
            state.acting_version, state.report = poll.acting_version, poll.report
            self._cond.notify_all()
        if new:
            assert poll.report is not None
            log.info(
                "fleet: %s: deploy v%04d %s (acting %s)",
                poll.arm,
                poll.report.version,
                poll.report.status,
                poll.acting_version,
            )
        return self._state(poll.arm)

    def _chunk(self, msg: Message) -> ChunkAck:
        chunk = EpisodeChunk.from_message(msg)
        self._seen(chunk.arm)
        with self._cond:
            held = self._held_of(chunk.arm)
            if chunk.episode < held.episodes:  # held already: nothing more to send
                return ChunkAck(chunk.file.path, chunk.file.size)
            if chunk.episode > held.episodes:
                raise ProtocolError(
                    f"episode_chunk.episode: {chunk.episode}; the trainer takes episode {held.episodes} "
                    f"of {chunk.arm} next"
                )
            receiver = held.receivers.get(chunk.episode)
            if receiver is None:
                receiver = held.receivers[chunk.episode] = Receiver(self._incoming(chunk.arm, chunk.episode))
        return ChunkAck(chunk.file.path, receiver.receive(chunk.file, chunk.offset, chunk.data))

    def _fetch(self, msg: Message) -> WeightsChunk:
        fetch = WeightsFetch.from_message(msg)
        self._seen(fetch.arm)
        with self._cond:
            files = self._served.get(fetch.version)
        if files is None:
            raise ProtocolError(f"weights_fetch.version: {fetch.version} is not a version deployed here")
        entry = next((e for e in files if e.path == fetch.name), None)
        if entry is None:
            raise ProtocolError(f"weights_fetch.name: {fetch.name!r} is not a file of v{fetch.version:04d}")
        if fetch.offset > entry.size:
            raise ProtocolError(f"weights_fetch.offset: {fetch.offset} is beyond the size {entry.size}")
        length = min(fetch.length, self.cfg.chunk_bytes)
        data = read_chunk(self.registry.path(fetch.version) / entry.path, fetch.offset, length)
        return WeightsChunk(fetch.version, entry.path, fetch.offset, data)

    def _commit(self, msg: Message) -> FleetState:
        commit = EpisodeCommit.from_message(msg)
        self._seen(commit.arm)
        arm, index = commit.arm, commit.episode
        with self._cond:
            held = self._held_of(arm)
            if index < held.episodes:  # held already: exactly once
                self._forget_incoming(arm, index)
                return self._state(arm)
            if index > held.episodes:
                raise CommitRefused(
                    f"episode_commit.episode: {index}; the trainer holds {held.episodes} episodes of "
                    f"{arm} and takes episode {held.episodes} next"
                )
            receiver = held.receivers.get(index) or Receiver(self._incoming(arm, index))
            length = self._take(arm, index, commit.files, receiver)
            held.episodes += 1
            held.frames += length
            held.receivers.pop(index, None)
            self._write_info(arm, self._incoming(arm, index) / INFO_FILE)
            self._forget_incoming(arm, index)
        log.info("fleet: %s: episode %d received (%d frames)", arm, index, length)
        if self._on_episode is not None:
            try:
                self._on_episode(arm, index)
            except Exception:
                log.exception("fleet: on_episode(%s, %d) failed", arm, index)
        return self._state(arm)

    _handlers: ClassVar[dict[MessageType, Callable]] = {
        MessageType.ARM_POLL: _poll,
        MessageType.EPISODE_CHUNK: _chunk,
        MessageType.WEIGHTS_FETCH: _fetch,
        MessageType.EPISODE_COMMIT: _commit,
    }

    # --- the inbox ---------------------------------------------------------------------------
    def _incoming(self, arm: str, index: int) -> Path:
        return self.inbox / INCOMING / arm / str(index)

    def _forget_incoming(self, arm: str, index: int) -> None:
        shutil.rmtree(self._incoming(arm, index), ignore_errors=True)  # the trainer's own files

    def _held_of(self, arm: str) -> _Held:
        held = self._held.get(arm)
        if held is None:
            held = self._held[arm] = self._scan(arm)
        return held

    def _scan(self, arm: str) -> _Held:
        """What the inbox holds of `arm`: its complete meta/episodes files (one episode each)."""
        indices, frames = [], 0
        for _, table in read_episode_files(
            episode_files(self.inbox / arm), columns=[EPISODE_INDEX, "length"]
        ):
            indices += table[EPISODE_INDEX].astype(int).tolist()
            frames += int(table["length"].sum())
        indices.sort()
        if indices != list(range(len(indices))):
            raise RuntimeError(f"fleet.inbox: {self.inbox / arm} holds episodes {indices}, not 0..n-1")
        return _Held(len(indices), frames)

    def _recover(self, arm: str) -> None:
        """A trainer stopped after an episode's metadata file and before info.json: write it with
        the totals (from the episode's received info.json, still in .incoming)."""
        held = self._held_of(arm)
        if held.episodes == 0:
            return
        path, last = self.inbox / arm / INFO_FILE, self._incoming(arm, held.episodes - 1) / INFO_FILE
        info = json.loads(path.read_text()) if path.exists() else {}
        if last.exists() or info.get("total_episodes") != held.episodes:
            self._write_info(arm, last if last.exists() else path)
            log.info("fleet: %s: info.json brought up to the %d episodes held", arm, held.episodes)
        self._forget_incoming(arm, held.episodes - 1)

    def _take(self, arm: str, index: int, files: tuple[FileEntry, ...], receiver: Receiver) -> int:
        """Check the episode's received files and move them into the inbox; returns its length."""
        incoming, dest = self._incoming(arm, index), self.inbox / arm
        by_path = {e.path: e for e in files}
        data = [p for p in by_path if p.startswith("data/")]
        episodes = [p for p in by_path if p.startswith(EPISODES_DIR + "/")]
        meta = {INFO_FILE, TASKS_FILE, STATS_FILE}
        others = sorted(set(by_path) - set(data) - set(episodes) - meta)
        if (
            len(data) != 1
            or len(episodes) != 1
            or others
            or INFO_FILE not in by_path
            or TASKS_FILE not in by_path
        ):
            raise CommitRefused(
                f"episode_commit.files: {sorted(by_path)} is not one data file, one {EPISODES_DIR} file, "
                f"{INFO_FILE}, {TASKS_FILE} and optionally {STATS_FILE}"
            )
        for entry in files:
            path = incoming / entry.path
            if not path.exists() or path.stat().st_size != entry.size:
                raise CommitRefused(f"episode_commit.files: {entry.path} is not (completely) received")
            if receiver.complete_sha256(path) != entry.sha256:
                raise CommitRefused(f"episode_commit.files: {entry.path} does not hash to {entry.sha256}")
        row = self._episode_row(incoming / episodes[0], index, data[0])
        self._check_info(arm, incoming / INFO_FILE)
        self._check_tasks(arm, incoming / TASKS_FILE)
        self._place(incoming / data[0], dest / data[0], by_path[data[0]].sha256)
        for name in (TASKS_FILE, STATS_FILE):
            if name in by_path:
                _replace(incoming / name, dest / name)
        self._place(incoming / episodes[0], dest / episodes[0], by_path[episodes[0]].sha256)
        return int(row["length"])

    @staticmethod
    def _episode_row(path: Path, index: int, data: str) -> pd.Series:
        try:
            table = pd.read_parquet(path)
        except Exception as e:
            raise CommitRefused(f"episode_commit: {EPISODES_DIR} file unreadable ({e})") from None
        if len(table) != 1:
            raise CommitRefused(
                f"episode_commit: its {EPISODES_DIR} file holds {len(table)} episodes; the fleet takes "
                "one episode per file, as the flywheel recorder writes them"
            )
        row = table.iloc[0]
        found = int(row[EPISODE_INDEX])
        if found != index:
            raise CommitRefused(f"episode_commit: its {EPISODES_DIR} file is episode {found}, not {index}")
        where = data_file(int(row["data/chunk_index"]), int(row["data/file_index"])).as_posix()
        if where != data:
            raise CommitRefused(f"episode_commit.files: the episode's frames are in {where}, not {data}")
        return row

    def _check_info(self, arm: str, new: Path) -> None:
        try:
            info = json.loads(new.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CommitRefused(f"episode_commit: {INFO_FILE} is not JSON ({e})") from None
        if not isinstance(info, dict) or "features" not in info or "fps" not in info:
            raise CommitRefused(f"episode_commit: {INFO_FILE} has no features or fps")
        current = self.inbox / arm / INFO_FILE
        if current.exists():
            first = json.loads(current.read_text())
            for key in ("fps", "features"):
                if info.get(key) != first.get(key):
                    raise CommitRefused(
                        f"episode_commit: {INFO_FILE} {key}: {str(info.get(key))[:200]} differs from the "
                        f"{str(first.get(key))[:200]} of {arm}'s first episodes"
                    )

    def _check_tasks(self, arm: str, new: Path) -> None:
        try:
            tasks = pd.read_parquet(new)
        except Exception as e:
            raise CommitRefused(f"episode_commit: {TASKS_FILE} unreadable ({e})") from None
        current = self.inbox / arm / TASKS_FILE
        if not current.exists():
            return
        before = pd.read_parquet(current)
        for task, index in zip(before.index, before["task_index"], strict=True):
            if task not in tasks.index or int(tasks.loc[task, "task_index"]) != int(index):
                raise CommitRefused(
                    f"episode_commit: {TASKS_FILE}: task {task!r} (index {index}) is not kept at its index"
                )

    @staticmethod
    def _place(source: Path, target: Path, sha256: str) -> None:
        """Move a verified file into the inbox; one already there must be the same, never replaced."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if sha256_file(target) != sha256:
                raise CommitRefused(f"episode_commit: {target} is in the inbox with other content; kept")
            source.unlink()
            return
        os.rename(source, target)

    def _write_info(self, arm: str, source: Path) -> None:
        """info.json (the arm's newest, or the inbox's own) with the totals of the episodes held."""
        path = self.inbox / arm / INFO_FILE
        info = json.loads((source if source.exists() else path).read_text())
        held = self._held_of(arm)
        write_info_with_totals(self.inbox / arm, info, held.episodes, held.frames)


def _bind(socket: zmq.Socket, address: str, wait_s: float = 3.0) -> None:
    """Bind, waiting a moment for a port a stopped server of this process may still hold (ZeroMQ
    releases it on its I/O thread, after close returns)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            socket.bind(address)
            return
        except zmq.ZMQError as e:
            if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _replace(source: Path, target: Path) -> None:
    """Atomically: `target` is the old file or the new one, never half of either."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
