"""The uplink: beside an arm's rollout daemon, it ships the arm's episodes to the trainer and brings
the trainer's deploy target home (docs/protocol.md "Fleet").

Once a second (at once when there is news) it polls the trainer, which answers how many of this
arm's episodes it holds and which version the fleet should act with. Then:

- every complete episode the trainer does not hold yet goes out, in index order: its data file,
  its meta/episodes file and the dataset's info.json, tasks.parquet and stats.json, in chunks, each
  resumed from what the trainer says it holds, then a commit. The local dataset is only read.
- when the target differs from what it last deployed, it fetches the version into
  `<cache>/.partial-vNNNN/` (resuming from what is there), checks every file's sha256 and the
  weights against the manifest, renames the folder to `<cache>/vNNNN`, and sends DEPLOY with that
  folder to the local daemon. Its reply goes to the trainer with the next poll. A version already
  cached (a rollback) is not fetched again.

Every request is idempotent: after a timeout the uplink opens a new socket and carries on where
the trainer says it stands, so a dropped link or a restart of either side loses and duplicates
nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zmq

from flywheel.contracts.dataset import (
    EPISODE_INDEX,
    INFO_FILE,
    STATS_FILE,
    TASKS_FILE,
    data_file,
    episode_files,
    read_episode_files,
)
from flywheel.contracts.fleet import (
    ArmPoll,
    ChunkAck,
    DeployOutcome,
    EpisodeChunk,
    EpisodeCommit,
    FleetRefused,
    FleetState,
    WeightsChunk,
    WeightsFetch,
)
from flywheel.contracts.messages import DeployRequest, send_deploy
from flywheel.contracts.protocol import ProtocolError
from flywheel.contracts.registry import MANIFEST_FILE, WEIGHTS_FILE
from flywheel.contracts.transfer import FileEntry, TransferRefused, download, read_chunk, size_and_sha256
from flywheel.uplink.client import FleetClient
from flywheel.uplink.config import UplinkConfig

log = logging.getLogger(__name__)


class UplinkError(RuntimeError):
    """The local dataset cannot be shipped as it is (the text says why and what to do)."""


@dataclass(frozen=True)
class LocalEpisode:
    index: int
    meta_file: str  # its meta/episodes parquet, relative to the dataset root
    data_file: str  # its data parquet


class Uplink:
    def __init__(self, cfg: UplinkConfig, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        self.root, self.cache = Path(cfg.dataset_root), Path(cfg.cache)
        self.client = FleetClient(self.ctx, cfg.trainer, cfg.wire.security(cfg.identity), cfg.timeout_s)
        self.acting: int | None = None  # the daemon's acting version, as its last DEPLOY_REPLY said
        self.report: DeployOutcome | None = None  # the outcome of the last deploy, for the next poll
        self.deployed: int | None = None  # the target version last handed to the daemon
        self._deploy_retry_at = 0.0
        self._episodes: dict[Path, LocalEpisode] = {}  # complete meta/episodes file -> its episode
        self._entries: dict[Path, tuple[int, int, FileEntry]] = {}  # file -> (size, mtime_ns, entry)
        self.sent_bytes = 0  # episode bytes sent (chunks), for logs and tests
        self.fetched_bytes = 0  # weight bytes fetched
        self.shipped: list[int] = []  # episodes committed by this uplink
        self._stop: threading.Event | None = None  # run()'s: a backlog being shipped stops there

    # --- one round ---------------------------------------------------------------------------
    def poll(self) -> FleetState:
        return self.client.call(ArmPoll(self.cfg.arm, self.acting, self.report), FleetState)

    def step(self) -> FleetState:
        """Poll; bring the deploy target home; ship every complete episode the trainer lacks."""
        state = self.poll()
        if self.sync_weights(state):
            state = self.poll()  # report the daemon's answer at once
        for episode in self.local_episodes():
            if self._stop is not None and self._stop.is_set():
                break  # SIGTERM: the rest waits on disk for the next start
            if episode.index < state.next_episode:
                continue
            if episode.index > state.next_episode:
                raise UplinkError(
                    f"dataset_root: {self.root} has no complete episode {state.next_episode}, which the "
                    f"trainer takes next (it has {episode.index})"
                )
            state = self.ship_episode(episode)
            if self.sync_weights(state):
                state = self.poll()
        return state

    def run(self, stop: threading.Event) -> None:
        log.info("uplink %s: %s -> %s", self.cfg.arm, self.root, self.cfg.trainer)
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    self.step()
                except TimeoutError as e:
                    log.warning("uplink: %s; trying again", e)
                except (FleetRefused, TransferRefused, ProtocolError) as e:
                    log.error("uplink: refused: %s; trying again", e)
                except OSError as e:  # a file of the dataset or the cache, a socket: try again
                    log.error("uplink: %s; trying again", e)
                stop.wait(self.cfg.poll_s)
        finally:
            self.client.close()

    # --- episodes ----------------------------------------------------------------------------
    def local_episodes(self) -> list[LocalEpisode]:
        """The dataset's complete episodes, in index order (one being written is left out)."""
        for path in episode_files(self.root):
            if path in self._episodes:
                continue
            columns = [EPISODE_INDEX, "data/chunk_index", "data/file_index"]
            tables = read_episode_files([path], columns=columns, skip_unfinished=True)
            if not tables:
                continue  # the recorder is writing it now
            table = tables[0][1]
            if len(table) != 1:
                raise UplinkError(
                    f"dataset_root: {path} holds {len(table)} episodes in one file (a dataset recorded "
                    "by stock lerobot-record?); the uplink ships datasets the flywheel records, one "
                    "episode per file (flywheel rollout / flywheel record)"
                )
            row = table.iloc[0]
            data = data_file(int(row["data/chunk_index"]), int(row["data/file_index"])).as_posix()
            relative = path.relative_to(self.root).as_posix()
            self._episodes[path] = LocalEpisode(int(row[EPISODE_INDEX]), relative, data)
        episodes = sorted(self._episodes.values(), key=lambda e: e.index)
        data_files = [e.data_file for e in episodes]
        if len(set(data_files)) != len(data_files):
            raise UplinkError(
                f"dataset_root: {self.root} packs several episodes in one data file (stock lerobot-record?); "
                "the uplink ships datasets the flywheel records, one episode per file"
            )
        return episodes

    def ship_episode(self, episode: LocalEpisode) -> FleetState:
        files: list[tuple[FileEntry, Path | bytes]] = []
        for relative in (episode.data_file, episode.meta_file):
            files.append((self._entry(relative), self.root / relative))
        for name, content in self._meta_snapshot().items():
            files.append((FileEntry(name, len(content), hashlib.sha256(content).hexdigest()), content))
        for entry, source in files:
            self._send(episode.index, entry, source)
        commit = EpisodeCommit(self.cfg.arm, episode.index, tuple(entry for entry, _ in files))
        state = self.client.call(commit, FleetState)
        self.shipped.append(episode.index)
        log.info("uplink: episode %d shipped (the trainer holds %d)", episode.index, state.next_episode)
        return state

    def _send(self, index: int, entry: FileEntry, source: Path | bytes) -> None:
        held = self.client.call(EpisodeChunk(self.cfg.arm, index, entry, 0, b""), ChunkAck).held
        stalled = 0
        while held < entry.size:
            length = min(self.cfg.chunk_bytes, entry.size - held)
            data = (
                source[held : held + length]
                if isinstance(source, bytes)
                else read_chunk(source, held, length)
            )
            if len(data) != length:
                raise UplinkError(f"dataset_root: {source} changed while it was sent (size)")
            ack = self.client.call(EpisodeChunk(self.cfg.arm, index, entry, held, data), ChunkAck)
            self.sent_bytes += len(data)
            stalled = stalled + 1 if ack.held == held else 0
            if stalled > 3:
                raise TransferRefused(f"{entry.path}: the trainer takes no more bytes at {held}")
            held = ack.held

    def _entry(self, relative: str) -> FileEntry:
        """Size and sha256 of a saved episode's file (those never change; hashed once)."""
        path = self.root / relative
        stat = path.stat()
        known = self._entries.get(path)
        if known is None or known[:2] != (stat.st_size, stat.st_mtime_ns):
            size, sha = size_and_sha256(path)
            known = self._entries[path] = (stat.st_size, stat.st_mtime_ns, FileEntry(relative, size, sha))
        return known[2]

    def _meta_snapshot(self, attempts: int = 20) -> dict[str, bytes]:
        """info.json, tasks.parquet and stats.json as they are now, each read whole (they are small)
        and parsed, again if the recorder was rewriting it at that moment."""
        parse = {
            INFO_FILE: lambda b: json.loads(b),
            TASKS_FILE: lambda b: pq.read_table(pa.BufferReader(b)),
            STATS_FILE: lambda b: json.loads(b),
        }
        snapshot = {}
        for name, check in parse.items():
            path = self.root / name
            if name == STATS_FILE and not path.exists():
                continue
            for attempt in range(attempts):
                content = path.read_bytes()
                try:
                    check(content)
                    break
                except Exception:
                    if attempt == attempts - 1:
                        raise UplinkError(f"dataset_root: {path} is not readable") from None
                    time.sleep(0.05)
            snapshot[name] = content
        return snapshot

    # --- weights -----------------------------------------------------------------------------
    def sync_weights(self, state: FleetState) -> bool:
        """Fetch and deploy the target when it differs from what was last deployed; True when
        the daemon answered (a report to send)."""
        version = state.target_version
        if version is None or version == self.deployed or time.monotonic() < self._deploy_retry_at:
            return False
        folder = self.fetch(version, state.target_files)
        sha = json.loads((folder / MANIFEST_FILE).read_text())["sha256"]
        security = self.cfg.wire.security(self.cfg.identity)
        try:
            reply = send_deploy(
                self.ctx,
                self.cfg.wire.deploy,
                DeployRequest(version, folder.resolve(), sha),
                self.cfg.deploy_timeout_s,
                security,
                connect_timeout_s=min(5.0, self.cfg.deploy_timeout_s),
                server=self.cfg.wire.deploy_key,
            )
        except (TimeoutError, ConnectionError) as e:
            log.warning("uplink: deploy v%04d: the daemon at %s: %s", version, self.cfg.wire.deploy, e)
            self._deploy_retry_at = time.monotonic() + 10 * self.cfg.poll_s
            self.report = DeployOutcome(version, "rejected", f"the arm's daemon did not answer: {e}")
            return True
        self.deployed, self.acting = version, reply.acting_version
        self.report = DeployOutcome(version, reply.status, reply.reason or "")
        log.info(
            "uplink: deploy v%04d: %s (acting %s) %s", version, reply.status, self.acting, reply.reason or ""
        )
        return True

    def fetch(self, version: int, files: tuple[FileEntry, ...]) -> Path:
        """The version's folder in the cache, fetched (resuming) and verified if not there yet."""
        final = self.cache / f"v{version:04d}"
        if final.is_dir():
            return final
        partial = self.cache / f".partial-v{version:04d}"
        started = time.monotonic()
        for entry in files:
            fetched = download(
                partial / entry.path,
                entry,
                lambda offset, length, entry=entry: self._fetch_chunk(version, entry, offset, length),
                self.cfg.chunk_bytes,
            )
            self.fetched_bytes += fetched
        manifest = json.loads((partial / MANIFEST_FILE).read_text())
        weights = next((e for e in files if e.path == WEIGHTS_FILE), None)
        if weights is None or manifest.get("sha256") != weights.sha256:
            (partial / WEIGHTS_FILE).unlink(missing_ok=True)
            raise TransferRefused(
                f"{WEIGHTS_FILE}: v{version:04d}'s manifest says {manifest.get('sha256')}, the file "
                f"announced hashes to {None if weights is None else weights.sha256}"
            )
        os.rename(partial, final)  # fails rather than replaces a folder that appeared meanwhile
        total = sum(e.size for e in files)
        log.info("uplink: v%04d fetched (%d bytes) in %.1f s", version, total, time.monotonic() - started)
        return final

    def _fetch_chunk(self, version: int, entry: FileEntry, offset: int, length: int) -> bytes:
        chunk = self.client.call(
            WeightsFetch(self.cfg.arm, version, entry.path, offset, length), WeightsChunk
        )
        if (chunk.version, chunk.name, chunk.offset) != (version, entry.path, offset):
            raise ProtocolError(
                f"weights_chunk: {chunk.version}/{chunk.name}@{chunk.offset} was not asked for"
            )
        return chunk.data


def uplink_main(cfg: UplinkConfig) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        Uplink(cfg).run(stop)
    except (UplinkError, FileNotFoundError) as e:
        print(f"flywheel uplink: {e}", file=sys.stderr)
        return 2
    return 0
