"""Arms on their own computers, one trainer: a FleetServer (trainer/fleet.py) and uplinks
(flywheel/uplink/) over loopback. Episodes arrive exactly once and byte-identical, through
duplicates and restarts; weights are fetched, verified and deployed to the arm's daemon; what is
not allowed is refused; with keys, a stranger is not answered."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import (
    INFO_FILE,
    DataType,
    EpisodeInfo,
    data_files,
    dataset_features,
    episode_files,
    open_for_append,
    save_episode,
)
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.fleet import (
    ArmPoll,
    ChunkAck,
    EpisodeChunk,
    EpisodeCommit,
    FleetRefused,
    FleetState,
)
from flywheel.contracts.messages import DeployReply, DeployRequest
from flywheel.contracts.protocol import MessageType, decode, encode, request
from flywheel.contracts.registry import WEIGHTS_FILE, ModelRegistry
from flywheel.contracts.security import Security, make_keys
from flywheel.contracts.transfer import FileEntry
from flywheel.uplink.agent import Uplink, UplinkError
from flywheel.uplink.client import FleetClient
from flywheel.uplink.config import UplinkConfig
from tests.netutil import free_address
from trainer.fleet import FleetConfig, FleetServer

FEATURES = dataset_features({"a": float, "b": float}, {"x": float}, use_videos=False)


def record(dataset, episodes: int, frames: int = 3, task: str = "t") -> None:
    for _ in range(episodes):
        for k in range(frames):
            dataset.add_frame({"observation.state": np.array([k, -k], np.float32),
                               "action": np.array([k], np.float32), "intervention": np.array([False]),
                               "policy_version": np.array([1]), "next.reward": np.zeros(1, np.float32),
                               "next.done": np.array([k == frames - 1]), "task": task})  # fmt: skip
        save_episode(dataset, EpisodeInfo(DataType.AUTO, success=True))


def arm_dataset(root: Path, episodes: int, frames: int = 3):
    dataset = open_for_append(root, "t/x", 30, FEATURES, "arm", False)
    record(dataset, episodes, frames)
    return dataset


def uplink_config(tmp_path: Path, trainer: str, arm: str, **kw) -> UplinkConfig:
    defaults = {
        "dataset_root": tmp_path / arm / "dataset",
        "cache": tmp_path / arm / "cache",
        "wire": WireConfig(deploy=free_address()),
        "timeout_s": 0.5,
        "poll_s": 0.05,
        "chunk_bytes": 2048,
        "deploy_timeout_s": 3.0,
    }
    return UplinkConfig(trainer=trainer, arm=arm, **{**defaults, **kw})


def episode_bytes(root: Path) -> dict[str, bytes]:
    """The files of every saved episode, by path relative to the dataset root."""
    files = [*data_files(root), *episode_files(root)]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


@pytest.fixture
def fleet(tmp_path):
    """A started FleetServer on loopback, and the (arm, episode) of every on_episode call."""
    calls: list[tuple[str, int]] = []
    servers = []

    def start(address: str | None = None, **kw) -> FleetServer:
        cfg = FleetConfig(bind=address or free_address(), inbox=tmp_path / "inbox", arm_timeout_s=5.0)
        server = FleetServer(cfg, tmp_path / "models", on_episode=lambda a, i: calls.append((a, i)), **kw)
        servers.append(server.start())
        return server

    yield start, calls
    for server in servers:
        server.stop()


def test_each_episode_arrives_once_byte_identical_and_a_duplicate_commit_is_harmless(tmp_path, fleet):
    start, calls = fleet
    server = start()
    arms = {"kitchen": 3, "lab-2": 2}
    uplinks, datasets = {}, {}
    for arm, n in arms.items():
        cfg = uplink_config(tmp_path, server.cfg.bind, arm)
        datasets[arm] = arm_dataset(cfg.dataset_root, n)
        uplinks[arm] = Uplink(cfg)
    for uplink in uplinks.values():
        assert uplink.step().next_episode == arms[uplink.cfg.arm]
    assert server.arms() == ["kitchen", "lab-2"]
    assert calls == [("kitchen", 0), ("kitchen", 1), ("kitchen", 2), ("lab-2", 0), ("lab-2", 1)]
    for arm in arms:
        local, inbox = uplinks[arm].root, tmp_path / "inbox" / arm
        assert episode_bytes(inbox) == episode_bytes(local)  # every episode's files, byte for byte
        assert json.loads((inbox / INFO_FILE).read_text())["total_episodes"] == arms[arm]
    received = LeRobotDataset("t/x", root=tmp_path / "inbox" / "kitchen")  # a dataset LeRobot reads
    assert (received.num_episodes, received.num_frames) == (3, 9)
    assert not list((tmp_path / "inbox" / ".incoming").rglob("*.parquet"))  # nothing left over

    # Nothing new: nothing is sent again.
    kitchen = uplinks["kitchen"]
    sent = kitchen.sent_bytes
    kitchen.step()
    assert kitchen.sent_bytes == sent and len(calls) == 5

    # An episode being written (its metadata file has no footer yet) is left until it is complete.
    partial = kitchen.root / "meta/episodes/chunk-000/file-003.parquet"
    partial.write_bytes(b"PAR1 half-written")
    assert kitchen.step().next_episode == 3
    partial.unlink()
    record(datasets["kitchen"], 1)
    assert kitchen.step().next_episode == 4 and calls[-1] == ("kitchen", 3)
    assert episode_bytes(tmp_path / "inbox" / "kitchen") == episode_bytes(kitchen.root)

    # The same commit again (its reply was lost): success, the state unchanged, no second episode.
    client = FleetClient(zmq.Context.instance(), server.cfg.bind, None, 2.0)
    files = tuple(FileEntry.of(kitchen.root, p) for p in sorted(episode_bytes(kitchen.root))[:1])
    state = client.call(EpisodeCommit("kitchen", 1, files), FleetState)
    assert state.next_episode == 4 and len(calls) == 6
    assert episode_bytes(tmp_path / "inbox" / "kitchen") == episode_bytes(kitchen.root)
    # One beyond the next is refused, naming the index the trainer expects.
    with pytest.raises(FleetRefused, match="takes episode 4 next"):
        client.call(EpisodeCommit("kitchen", 6, files), FleetState)
    client.close()


class CutAfterChunks(FleetServer):
    """Stops answering (as if killed) once `n` episode chunks were taken."""

    def __init__(self, *args, n: int, **kw):
        super().__init__(*args, **kw)
        self.n, self.chunks, self.cut = n, 0, threading.Event()

    def handle(self, frames):
        if self.cut.is_set():
            self._stop.wait(10)  # answers nothing until stopped: the uplink times out
        reply = super().handle(frames)
        if frames[0] == MessageType.EPISODE_CHUNK.encode():
            self.chunks += 1
            if self.chunks >= self.n:
                self.cut.set()
        return reply


def test_a_trainer_killed_mid_transfer_resumes_where_it_stopped(tmp_path, fleet):
    start, calls = fleet
    address = free_address()
    cfg = uplink_config(tmp_path, address, "arm1", chunk_bytes=512)
    arm_dataset(cfg.dataset_root, 2, frames=40)
    first = CutAfterChunks(FleetConfig(bind=address, inbox=tmp_path / "inbox"), tmp_path / "models", n=8)
    first.start()
    uplink, stop = Uplink(cfg), threading.Event()
    thread = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert first.cut.wait(20)
        incoming = list((tmp_path / "inbox" / ".incoming").rglob("*.part"))
        assert incoming and all(p.stat().st_size > 0 for p in incoming)  # a partial file is there
        time.sleep(1.0)  # the trainer is gone a while: the uplink times out, again and again
        first.stop()
        server = start(address)  # a new trainer process on the same inbox
        deadline = time.monotonic() + 30
        while server.held("arm1") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert server.held("arm1") == 2 and calls == [("arm1", 0), ("arm1", 1)]
    assert episode_bytes(tmp_path / "inbox" / "arm1") == episode_bytes(cfg.dataset_root)
    assert uplink.client.timeouts >= 1  # it did lose the trainer
    meta = sum(len((cfg.dataset_root / f).read_bytes()) for f in ("meta/info.json", "meta/tasks.parquet"))
    stats = cfg.dataset_root / "meta/stats.json"
    meta += len(stats.read_bytes()) if stats.exists() else 0
    total = sum(len(b) for b in episode_bytes(cfg.dataset_root).values()) + 2 * meta
    assert uplink.sent_bytes <= total  # resumed: no byte of a file sent twice

    # Killed after an episode's metadata file was moved in but before info.json: a restart fixes it.
    server.stop()
    info = tmp_path / "inbox" / "arm1" / INFO_FILE
    stale = json.loads(info.read_text())
    stale["total_episodes"] = 1
    info.write_text(json.dumps(stale))
    again = start(address)
    assert again.held("arm1") == 2 and json.loads(info.read_text())["total_episodes"] == 2


class FakeDaemon:
    """The arm's daemon's deploy endpoint: answers every DEPLOY with `swapped` and keeps it."""

    def __init__(self, address: str):
        self.requests: list[DeployRequest] = []
        self._stop = threading.Event()
        self._socket = zmq.Context.instance().socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            if self._socket.poll(50):
                req = DeployRequest.from_message(decode(self._socket.recv_multipart()))
                self.requests.append(req)
                reply = DeployReply("swapped", req.version, version=req.version)
                self._socket.send_multipart(encode(reply.to_message()))

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._socket.close()


def publish(registry: ModelRegistry, folder: Path, seed: int, size: int = 300_000) -> int:
    folder.mkdir(parents=True)
    (folder / WEIGHTS_FILE).write_bytes(np.random.default_rng(seed).bytes(size))
    (folder / "config.json").write_text(json.dumps({"type": "act", "seed": seed}))
    return registry.publish(folder).version


def test_a_version_is_fetched_verified_and_deployed_and_a_rollback_is_not_fetched_again(tmp_path, fleet):
    start, _ = fleet
    registry = ModelRegistry(tmp_path / "models")
    v1, v2 = (publish(registry, tmp_path / f"p{i}", i) for i in (1, 2))
    server = start()
    cfg = uplink_config(tmp_path, server.cfg.bind, "arm1", chunk_bytes=64 << 10)
    daemon = FakeDaemon(cfg.wire.deploy)
    # An earlier fetch of v2 was interrupted half-way: it resumes from there.
    half = (registry.path(v2) / WEIGHTS_FILE).read_bytes()[:150_000]
    (cfg.cache / f".partial-v{v2:04d}").mkdir(parents=True)
    (cfg.cache / f".partial-v{v2:04d}" / WEIGHTS_FILE).write_bytes(half)
    uplink, stop = Uplink(cfg), threading.Event()
    thread = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while "arm1" not in server._arms and time.monotonic() < deadline:
            time.sleep(0.02)
        reports = server.deploy(v1, timeout_s=20)
        assert reports["arm1"].status == "swapped" and reports["arm1"].acting_version == v1
        cached = cfg.cache / f"v{v1:04d}"
        for name in ("model.safetensors", "config.json", "manifest.json"):
            assert (cached / name).read_bytes() == (registry.path(v1) / name).read_bytes()
        assert daemon.requests[-1] == DeployRequest(v1, cached.resolve(), registry.manifest(v1).sha256)
        fetched = uplink.fetched_bytes

        assert server.deploy(v2, timeout_s=20)["arm1"].status == "swapped"
        assert daemon.requests[-1].path == (cfg.cache / f"v{v2:04d}").resolve()
        v2_bytes = sum(p.stat().st_size for p in registry.path(v2).iterdir())
        assert uplink.fetched_bytes - fetched == v2_bytes - len(half)  # resumed, not fetched again
        assert not (cfg.cache / f".partial-v{v2:04d}").exists()

        fetched = uplink.fetched_bytes
        rollback = server.deploy(v1, timeout_s=20)["arm1"]
        assert (rollback.status, rollback.acting_version) == ("swapped", v1)
        assert uplink.fetched_bytes == fetched and daemon.requests[-1].path == cached.resolve()
        assert len(daemon.requests) == 3
    finally:
        stop.set()
        thread.join(10)
        daemon.close()
    # An arm no longer heard from is not waited for: it is reported unreachable at once.
    time.sleep(0.1)
    server.cfg.arm_timeout_s = 0.05
    t0 = time.monotonic()
    gone = server.deploy(v2, timeout_s=5)["arm1"]
    assert (gone.status, gone.acting_version) == ("unreachable", v1) and time.monotonic() - t0 < 4
    # Corrupted weights in the registry are never deployed (the manifest's sha256 is checked).
    bad = registry.path(v2) / WEIGHTS_FILE
    bad.write_bytes(b"\0" + bad.read_bytes()[1:])
    with pytest.raises(ValueError, match="its manifest says"):
        server.deploy(v2, timeout_s=1)


def test_a_restarted_trainer_s_target_reaches_an_arm_that_connects_later(tmp_path, fleet):
    """set_target (what a restarted trainer does with its acting version) waits for nobody, and the
    next poll of any arm carries the version and its files."""
    start, _ = fleet
    registry = ModelRegistry(tmp_path / "models")
    version = publish(registry, tmp_path / "p1", 1)
    server = start()
    client = FleetClient(zmq.Context.instance(), server.cfg.bind, None, 2.0)
    assert client.call(ArmPoll("late", None, None), FleetState).target_version is None
    server.set_target(version)
    state = client.call(ArmPoll("late", None, None), FleetState)
    assert state.target_version == version
    assert {f.path for f in state.target_files} >= {WEIGHTS_FILE, "config.json", "manifest.json"}


def test_what_is_not_allowed_is_refused(tmp_path, fleet):
    start, calls = fleet
    server = start()
    ctx = zmq.Context.instance()
    client = FleetClient(ctx, server.cfg.bind, None, 2.0)
    content = b"frames" * 100
    entry = FileEntry("data/chunk-000/file-000.parquet", len(content), "0" * 64)  # not its hash
    with pytest.raises(FleetRefused, match="sha256"):
        client.call(EpisodeChunk("arm1", 0, entry, 0, content), ChunkAck)
    incoming = tmp_path / "inbox" / ".incoming"
    assert not [p for p in incoming.rglob("*") if p.is_file()]  # the corrupt part is discarded
    # A chunk beyond what is held is not written; the ack says where to resume.
    good = FileEntry(entry.path, len(content), hashlib.sha256(content).hexdigest())
    assert client.call(EpisodeChunk("arm1", 0, good, 100, content[100:200]), ChunkAck).held == 0
    for path in ("../../outside.parquet", "/tmp/outside.parquet", "videos/x.mp4", "meta/../../x"):
        with pytest.raises(FleetRefused, match=r"episode_chunk\.path"):
            client.call(EpisodeChunk("arm1", 0, FileEntry(path, 3, good.sha256), 0, b"abc"), ChunkAck)
    assert not (tmp_path / "outside.parquet").exists() and not Path("/tmp/outside.parquet").exists()
    for arm in ("../evil", "a b", "x" * 65):
        reply = request(ctx, server.cfg.bind, MessageType.ARM_POLL, {"arm": arm}, 2.0, server="trainer")
        assert reply.type == MessageType.FLEET_ERROR and "arm_poll.arm" in reply.fields["reason"]
    # A commit of files that were not received is refused; nothing enters the inbox.
    with pytest.raises(FleetRefused, match="not \\(completely\\) received"):
        names = ("meta/episodes/chunk-000/file-000.parquet", INFO_FILE, "meta/tasks.parquet")
        files = (good, *(FileEntry(name, 3, good.sha256) for name in names))
        client.call(EpisodeCommit("arm1", 0, files), FleetState)
    assert server.arms() == [] and calls == []
    assert client.call(ArmPoll("arm1"), FleetState).next_episode == 0  # the server lives on
    client.close()
    # A dataset that packs several episodes in one file (stock lerobot-record) is refused by the uplink.
    stock = LeRobotDataset.create("local/stock", 30, FEATURES, root=tmp_path / "stock", use_videos=False)
    for _ in range(2):
        for k in range(2):
            state = np.array([k, k], np.float32)
            stock.add_frame({"observation.state": state, "action": np.zeros(1, np.float32),
                             "intervention": np.array([False]), "policy_version": np.array([1]),
                             "next.reward": np.zeros(1, np.float32), "next.done": np.array([False]),
                             "task": "t"})  # fmt: skip
        stock.save_episode()
    stock.finalize()
    uplink = Uplink(uplink_config(tmp_path, server.cfg.bind, "stock", dataset_root=tmp_path / "stock"))
    with pytest.raises(UplinkError, match="2 episodes in one file"):
        uplink.step()
    assert not (tmp_path / "inbox" / "stock").exists()


def test_with_keys_a_client_without_a_known_key_gets_no_answer(tmp_path):
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    make_keys(keys, ("trainer", "uplink"))
    make_keys(stranger, ("uplink",))  # a valid key pair the trainer does not know
    shutil.copy(keys / "public" / "trainer.key", stranger / "public" / "trainer.key")
    ctx = zmq.Context()  # its own: the authenticator belongs to a context
    address = free_address()
    cfg = FleetConfig(bind=address, inbox=tmp_path / "inbox")
    server = FleetServer(cfg, tmp_path / "models", security=Security(keys, "trainer"), ctx=ctx).start()
    try:
        poll = ArmPoll("arm1").to_message().fields
        known = request(
            ctx, address, MessageType.ARM_POLL, poll, 5.0, Security(keys, "uplink"), server="trainer"
        )
        assert known.type == MessageType.FLEET_STATE
        with pytest.raises(TimeoutError):
            request(
                ctx, address, MessageType.ARM_POLL, poll, 1.0, Security(stranger, "uplink"), server="trainer"
            )
        with pytest.raises(TimeoutError):  # no keys at all
            request(ctx, address, MessageType.ARM_POLL, poll, 1.0, None, server="trainer")
        uplink_cfg = uplink_config(tmp_path, address, "arm1", wire=WireConfig(keys_dir=keys))
        assert Uplink(uplink_cfg, ctx).poll().next_episode == 0  # the uplink authenticates
    finally:
        server.stop()


def test_flywheel_run_gives_its_uplink_the_arm_s_own_key_and_refuses_one_without_a_trainer():
    from flywheel.configs import RunConfig
    from flywheel.supervisor import uplink_config as run_uplink_config

    cfg = RunConfig(trainer_address="tcp://127.0.0.1:5560", arm="kitchen", uplink_identity="uplink-kitchen")
    uplink = run_uplink_config(cfg)
    assert (uplink.identity, uplink.arm, uplink.trainer) == ("uplink-kitchen", "kitchen", cfg.trainer_address)
    assert run_uplink_config(RunConfig(trainer_address="tcp://127.0.0.1:5560")).identity == "uplink"
    with pytest.raises(ValueError, match=r"uplink_identity: 'uplink-kitchen'.*--trainer_address"):
        RunConfig(uplink_identity="uplink-kitchen")
