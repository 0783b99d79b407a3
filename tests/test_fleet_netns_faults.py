"""Faults of a fleet across real network hosts (benchmarks/netns.py): a hub `trainer` namespace running
`flywheel trainer --every=0` (it only serves the fleet) and a leaf namespace for the arm's side,
CurveZMQ between them, each process a real `flywheel` CLI process.

1. The trainer is SIGKILLed while an episode's data file is half received (a `.part` in
   `<inbox>/.incoming/`), and started again on the same folders: the uplink times out, tries again,
   and the transfer resumes where the part stands; every episode ends in the inbox exactly once,
   byte for byte, and the half-sent file is not sent again from its start (the leaf's veth counted
   fewer bytes than the episodes' files plus half of what the part held at the kill).
2. Clients that do not hold a key the trainer knows (a fresh key pair of their own, or no keys at
   all) get no answer, to a poll or to an episode chunk, and leave nothing in the inbox; the same
   requests with the known `uplink` key are answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flywheel.contracts.dataset import (
    DataType,
    EpisodeInfo,
    dataset_features,
    episode_files,
    open_for_append,
    save_episode,
)
from flywheel.contracts.security import IDENTITIES, make_keys
from tests.fleetutil import complete_episodes, flywheel, sha256
from tests.netns import topology_factory

pytestmark = pytest.mark.timeout(300)

PORT = 5561
ENV = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "MUJOCO_GL": "egl",
    "SDL_VIDEODRIVER": "dummy",
    "SDL_AUDIODRIVER": "dummy",
}
STATE = 512  # floats per frame: random, so parquet cannot shrink them (~3.7 MB per episode)
FRAMES = 1500
EPISODES = 3
CHUNK = 16384
KILL_AT = 9 << 18  # the trainer is killed once episode 1's data file part holds this many bytes (60 %)
KILL_EPISODE = 1  # episode 0 is in the inbox by then
STARTUP_S = 120.0  # a trainer process starting on a busy machine (torch, lerobot imports)


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} absent)"


def big_arm_dataset(root: Path) -> None:
    """EPISODES episodes of FRAMES frames of STATE random float32 each (a few MB per episode)."""
    features = dataset_features({f"s{i}": float for i in range(STATE)}, {"x": float}, use_videos=False)
    dataset = open_for_append(root, "t/x", 30, features, "arm", False)
    rng = np.random.default_rng(0)
    for _ in range(EPISODES):
        states = rng.standard_normal((FRAMES, STATE)).astype(np.float32)
        for k in range(FRAMES):
            dataset.add_frame({"observation.state": states[k], "action": np.array([k], np.float32),
                               "intervention": np.array([False]), "policy_version": np.array([1]),
                               "next.reward": np.zeros(1, np.float32),
                               "next.done": np.array([k == FRAMES - 1]), "task": "t"})  # fmt: skip
        save_episode(dataset, EpisodeInfo(DataType.AUTO, success=True))


def tx_bytes(net, host: str) -> int:
    """Bytes sent by `host` on its links (every interface but loopback), as its kernel counts them."""
    out = subprocess.run(
        ["ip", "-n", net.ns(host), "-s", "-j", "link", "show"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    return sum(i["stats64"]["tx"]["bytes"] for i in json.loads(out) if i["ifname"] != "lo")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_all(procs: list[subprocess.Popen], grace: float = 15.0) -> dict[int, int | None]:
    """SIGTERM every process group still running, SIGKILL what is left after `grace`."""
    for p in procs:
        if p.poll() is None:
            kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            kill_group(p)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
    return {p.pid: p.returncode for p in procs}


@pytest.fixture
def make_topology(request):
    return topology_factory(request)


def test_a_trainer_killed_mid_pull_resumes_and_loses_nothing(make_topology, tmp_path):
    net = make_topology(["arm0"], hub="trainer")
    started = time.monotonic()
    keys = tmp_path / "keys"
    make_keys(keys, (*IDENTITIES, "uplink"))
    root = tmp_path / "arm0" / "dataset"
    big_arm_dataset(root)
    own = complete_episodes(root)
    assert sorted(own) == list(range(EPISODES))
    made_s = time.monotonic() - started

    inbox, address = tmp_path / "inbox", net.address("trainer", toward="arm0")
    trainer_argv = flywheel(
        "trainer", f"--fleet.bind=tcp://{address}:{PORT}", f"--fleet.inbox={inbox}",
        f"--registry={tmp_path / 'models'}", f"--work_dir={tmp_path / 'work'}",
        f"--dataset_root={tmp_path / 'unused'}", f"--wire.keys_dir={keys}", "--every=0",
    )  # fmt: skip
    trainer_log, uplink_log = tmp_path / "trainer.log", tmp_path / "uplink.log"
    procs: list[subprocess.Popen] = []

    def start_trainer() -> subprocess.Popen:
        with trainer_log.open("ab") as out:
            proc = net.run("trainer", trainer_argv, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def diagnostics() -> str:
        return f"--- trainer.log\n{tail(trainer_log)}\n--- uplink.log\n{tail(uplink_log)}"

    sent_before = tx_bytes(net, "arm0")
    trainer = start_trainer()
    with uplink_log.open("wb") as out:
        uplink = net.run(
            "arm0",
            flywheel(
                "uplink", f"--trainer=tcp://{address}:{PORT}", "--arm=arm0", f"--dataset_root={root}",
                f"--cache={tmp_path / 'arm0' / 'cache'}", f"--wire.keys_dir={keys}",
                f"--chunk_bytes={CHUNK}", "--timeout_s=3", "--poll_s=0.2",
            ),
            env=ENV, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(uplink)
    try:
        # 1. Kill the trainer (its whole process group) while a data file is half received.
        incoming = inbox / ".incoming" / "arm0"
        deadline = time.monotonic() + STARTUP_S + 60
        part = None
        while part is None:
            assert time.monotonic() < deadline, f"no data file part of {KILL_AT} bytes\n{diagnostics()}"
            for p in (trainer, uplink):
                assert p.poll() is None, f"exited with {p.returncode}\n{diagnostics()}"
            too_late = inbox / "arm0" / own[KILL_EPISODE][1]
            assert not too_late.exists(), f"episode {KILL_EPISODE} arrived before a kill\n{diagnostics()}"
            for candidate in incoming.glob(f"{KILL_EPISODE}/data/*/*.part"):
                with contextlib.suppress(FileNotFoundError):
                    if candidate.stat().st_size >= KILL_AT:
                        kill_group(trainer)
                        part = candidate
                        break
            time.sleep(0.01)
        trainer.wait(10)
        held_at_kill = part.stat().st_size  # the process is gone: the part stands still now
        episode_at_kill = int(part.relative_to(incoming).parts[0])
        relative = part.relative_to(incoming / str(episode_at_kill))  # <file>.<sha256 prefix>.part
        file_size = (root / relative.parent / relative.name.rsplit(".", 2)[0]).stat().st_size
        assert held_at_kill < file_size, (held_at_kill, file_size)
        assert sorted(complete_episodes(inbox / "arm0")) == list(range(episode_at_kill))
        killed_at = time.monotonic()

        # 2. The uplink's request goes unanswered past its 3 s timeout; then the trainer is back.
        time.sleep(4.0)
        assert part.stat().st_size == held_at_kill
        assert uplink.poll() is None, diagnostics()
        trainer = start_trainer()

        # 3. Every episode arrives; the part is never seen below what it held at the kill.
        smallest_after = held_at_kill
        deadline = time.monotonic() + STARTUP_S + 60
        while len(complete_episodes(inbox / "arm0")) < EPISODES:
            assert time.monotonic() < deadline, f"inbox behind\n{diagnostics()}"
            for p in (trainer, uplink):
                assert p.poll() is None, f"exited with {p.returncode}\n{diagnostics()}"
            with contextlib.suppress(FileNotFoundError):
                smallest_after = min(smallest_after, part.stat().st_size)
            time.sleep(0.01)
        resumed_s = time.monotonic() - killed_at
        sent = tx_bytes(net, "arm0") - sent_before
    finally:
        stopped = stop_all(procs)
    assert stopped[uplink.pid] == 0 and stopped[trainer.pid] == 0, f"{stopped}\n{diagnostics()}"

    # Every episode exactly once, indices 0..n-1, byte for byte; nothing else, no leftovers.
    held = complete_episodes(inbox / "arm0")
    assert sorted(held) == list(range(EPISODES))
    for index, (data, meta) in held.items():
        assert (data, meta) == own[index]
        for relative in (data, meta):
            assert sha256(inbox / "arm0" / relative) == sha256(root / relative), relative
    assert len(list((inbox / "arm0" / "data").glob("*/*.parquet"))) == EPISODES
    assert len(episode_files(inbox / "arm0")) == EPISODES
    assert not list(inbox.rglob("*.part")) and not list(inbox.rglob("*.tmp"))

    # The resumed file was not sent again from its start: the part kept what it held (the
    # trainer kept it), and the leaf's link carried less than every episode's files plus half of
    # what the part held at the kill (what a resend from byte 0 would have added). The files of
    # an episode: its data and meta/episodes files, and the dataset's info, tasks and stats.
    assert smallest_after >= held_at_kill, (smallest_after, held_at_kill)
    metas = [root / "meta" / name for name in ("info.json", "tasks.parquet", "stats.json")]
    shared = sum(path.stat().st_size for path in metas if path.exists())
    payload = sum((root / d).stat().st_size + (root / m).stat().st_size + shared for d, m in own.values())
    assert payload <= sent < payload + held_at_kill // 2, (sent, payload, held_at_kill)
    log = uplink_log.read_text(errors="replace")
    assert "no reply to episode_chunk within 3 s; trying again" in log, log[-3000:]
    assert trainer_log.read_text().count("serving the fleet") == 2
    print(
        f"dataset made in {made_s:.0f} s; killed at {held_at_kill} of {file_size} bytes of episode "
        f"{episode_at_kill}; all {EPISODES} in {resumed_s:.0f} s after the kill; link carried {sent} "
        f"bytes for {payload} of files ({sent / payload - 1:+.1%}); {time.monotonic() - started:.0f} s"
    )


# Run in the leaf: three clients of the trainer's fleet endpoint, each the uplink's own FleetClient.
# A known client (the `uplink` key) polls until the trainer answers (it is starting); then a client
# with a fresh key pair of its own and one with no keys at all each send a poll (with a deploy
# report, which the trainer would log) and an episode chunk (which it would write into the inbox);
# then the known client sends the same two requests. Prints what each got, as JSON.
CLIENTS = """
import hashlib, json, sys, time
from pathlib import Path
import zmq
from flywheel.contracts.fleet import ArmPoll, ChunkAck, DeployOutcome, EpisodeChunk, FleetState
from flywheel.contracts.security import Security
from flywheel.contracts.transfer import FileEntry
from flywheel.uplink.client import FleetClient

address, keys, stranger = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
startup_s, wait_s = float(sys.argv[4]), float(sys.argv[5])
ctx = zmq.Context()
known = Security(keys, "uplink")
deadline = time.monotonic() + startup_s
while True:
    try:
        FleetClient(ctx, address, known, 2.0).call(ArmPoll("known"), FleetState)
        break
    except TimeoutError:
        if time.monotonic() > deadline:
            raise
data = b"not from an arm"
entry = FileEntry("data/chunk-000/file-000.parquet", len(data), hashlib.sha256(data).hexdigest())
results = {}
for who, security in [("stranger_key", Security(stranger, "uplink")), ("no_key", None), ("known", known)]:
    for kind, payload, expected in [
        ("poll", ArmPoll(who, None, DeployOutcome(1, "swapped", "from " + who)), FleetState),
        ("chunk", EpisodeChunk(who, 0, entry, 0, data), ChunkAck),
    ]:
        client = FleetClient(ctx, address, security, wait_s)
        started = time.monotonic()
        try:
            reply = client.call(payload, expected)
            results[who + "/" + kind] = {"answered": repr(reply), "s": time.monotonic() - started}
        except TimeoutError as e:
            results[who + "/" + kind] = {"timeout": str(e), "s": time.monotonic() - started}
        finally:
            client.close()
print(json.dumps(results))
ctx.destroy(linger=0)
"""


def test_a_stranger_without_a_known_key_is_never_answered(make_topology, tmp_path):
    net = make_topology(["outside"], hub="trainer")
    started = time.monotonic()
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    make_keys(keys, (*IDENTITIES, "uplink"))
    make_keys(stranger, ("uplink",))  # a valid key pair, named like the real one, unknown to the trainer
    # It knows the trainer's public key, as anyone who saw it may.
    shutil.copy(keys / "public" / "trainer.key", stranger / "public" / "trainer.key")

    inbox, address = tmp_path / "inbox", net.address("trainer", toward="outside")
    trainer_log = tmp_path / "trainer.log"
    with trainer_log.open("wb") as out:
        trainer = net.run(
            "trainer",
            flywheel(
                "trainer", f"--fleet.bind=tcp://{address}:{PORT}", f"--fleet.inbox={inbox}",
                f"--registry={tmp_path / 'models'}", f"--work_dir={tmp_path / 'work'}",
                f"--dataset_root={tmp_path / 'unused'}", f"--wire.keys_dir={keys}", "--every=0",
            ),
            env=ENV, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        out = net.check_output(
            "outside",
            [sys.executable, "-c", CLIENTS, f"tcp://{address}:{PORT}", str(keys), str(stranger),
             str(STARTUP_S), "3"],
            timeout=STARTUP_S + 60, env=ENV,
        )  # fmt: skip
        assert trainer.poll() is None, tail(trainer_log)
    except subprocess.CalledProcessError as e:
        raise AssertionError(f"{e.stderr[-3000:]}\n--- trainer.log\n{tail(trainer_log)}") from None
    finally:
        stopped = stop_all([trainer])
    results = json.loads(out.strip().splitlines()[-1])
    log = trainer_log.read_text(errors="replace")

    for who in ("stranger_key", "no_key"):
        for kind in ("poll", "chunk"):
            got = results[f"{who}/{kind}"]
            assert "timeout" in got and got["s"] >= 2.9, (who, kind, got)
        assert who not in log, log[-3000:]  # not even refused: nothing of theirs reached the fleet
    # The same requests with the known key are answered, acted on and logged.
    assert "FleetState(next_episode=0" in results["known/poll"]["answered"], results
    assert "held=15" in results["known/chunk"]["answered"], results
    assert "fleet: known: deploy v0001 swapped" in log, log[-3000:]
    # In the inbox: the known client's chunk (a complete file of the episode being received), and
    # nothing of either stranger's.
    names = {p.relative_to(inbox).as_posix() for p in inbox.rglob("*")}
    assert ".incoming/known/0/data/chunk-000/file-000.parquet" in names, names
    assert not [n for n in names if "stranger" in n or "no_key" in n], names
    assert stopped[trainer.pid] == 0, f"{stopped}\n{log[-3000:]}"
    print(f"{json.dumps(results, indent=1)}\n{time.monotonic() - started:.0f} s")
