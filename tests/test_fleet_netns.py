"""Two arms and one trainer on three network hosts (benchmarks/netns.py), each a real `flywheel` process
tree: `flywheel run --robot sim --trainer_address=...` (daemon, simulated operator and pedal, uplink)
in each arm's namespace, `flywheel trainer --fleet.bind=...` in the hub's, CurveZMQ between them.

arm0's link is cut while its uplink is fetching the trainer's weights (the fetch made slow to catch:
32 KiB weight chunks from the trainer, 40 ms each way on arm0's link), held cut beyond the uplink's
10 s request timeout, and restored (the delay removed). Each arm starts with the sim's random-walk
baseline (policy_version -1). Then: the trainer trained on both arms' episodes, deployed the
version to both, both arms act with it (their own datasets hold frames recorded with its
policy_version), and every episode each arm recorded is in the trainer's inbox exactly once,
byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.contracts.dataset import episode_files, read_fleet_arms
from flywheel.contracts.fleet import ArmPoll
from flywheel.contracts.protocol import encode
from flywheel.contracts.registry import WEIGHTS_FILE, ModelRegistry
from flywheel.contracts.security import IDENTITIES, make_keys
from tests.fleetutil import complete_episodes, flywheel, sha256
from tests.netns import topology_factory
from tests.netutil import free_address
from trainer.fleet import FleetConfig, FleetServer

pytestmark = pytest.mark.timeout(600)

ARMS = ("arm0", "arm1")
PORT = 5560  # the hub's own port space: nothing else binds there
ENV = {
    **os.environ,
    "MUJOCO_GL": "egl",
    "SDL_VIDEODRIVER": "dummy",
    "SDL_AUDIODRIVER": "dummy",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",  # seven processes on two cores: one torch thread each
}
CHUNK = 32768  # the trainer's weight chunks: a fetch of the tiny policy (2.4 MB) is ~75 requests
CUT_S = 13.0  # > the uplink's 10 s request timeout: the request in flight is given up, a new socket opened
DEADLINE_S = 420.0  # from the start of the processes to a version acting on both arms

# A first version is cheap and passes the gate by construction ("no acting version: the first one
# goes out"); for a later one the gate runs no sim episodes and tolerates any held-out loss.
TRAINER_YAML = """\
every: 4
nightly_steps: 6
continuous_steps: 6
batch_size: 8
save_every: 1000
trackers: []
policy_preset: tiny
label:
  value:
    steps: 6
gate:
  sim_episodes: 0
  holdout_every: 5
  loss_tolerance: 100.0
"""


def acted_versions(root: Path) -> set[int]:
    """policy_version values in the arm's sealed data files (one being written is skipped)."""
    found: set[int] = set()
    for path in (root / "data").glob("*/*.parquet"):
        with contextlib.suppress(Exception):
            found |= set(pd.read_parquet(path, columns=["policy_version"])["policy_version"].tolist())
    return found


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} absent)"


@pytest.fixture
def make_topology(request):
    return topology_factory(request)


def test_two_arms_one_trainer_through_a_cut_link(make_topology, tmp_path):
    started = time.monotonic()
    net = make_topology(list(ARMS), hub="trainer")
    keys = tmp_path / "keys"
    make_keys(keys, (*IDENTITIES, "uplink"))  # what `flywheel keys --identities=uplink` makes
    assert net.delay("arm0", 40) in ("netem", "relay")

    inbox, registry, work = tmp_path / "inbox", tmp_path / "models", tmp_path / "work"
    (tmp_path / "trainer.yaml").write_text(TRAINER_YAML)
    trainer_log = tmp_path / "trainer.log"
    with trainer_log.open("wb") as out:
        trainer = net.run(
            "trainer",
            flywheel(
                "trainer", f"--config_path={tmp_path / 'trainer.yaml'}", f"--fleet.bind=tcp://0.0.0.0:{PORT}",
                f"--fleet.inbox={inbox}", f"--fleet.chunk_bytes={CHUNK}", "--fleet.deploy_timeout_s=240",
                f"--registry={registry}", f"--work_dir={work}",
                f"--dataset_root={tmp_path / 'unused'}", f"--wire.keys_dir={keys}",
            ),
            env=ENV, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    roots = {arm: tmp_path / arm / "dataset" for arm in ARMS}
    runs = {arm: tmp_path / arm / "run" for arm in ARMS}
    arms: dict[str, subprocess.Popen] = {}
    for arm in ARMS:
        (tmp_path / arm).mkdir()
        with (tmp_path / arm / "run.log").open("wb") as out:
            arms[arm] = net.run(
                arm,
                flywheel(
                    "run", "--robot", "sim", "--policy.baseline=random", "--episodes=0", "--fps=30",
                    "--episode_time_s=2", f"--dataset.root={roots[arm]}", f"--run_dir={runs[arm]}",
                    f"--trainer_address=tcp://{net.address('trainer', toward=arm)}:{PORT}", f"--arm={arm}",
                    f"--wire.keys_dir={keys}",
                ),
                env=ENV, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def diagnostics() -> str:
        parts = [f"--- trainer.log\n{tail(trainer_log)}"]
        for arm in ARMS:
            parts.append(f"--- {arm} run.log\n{tail(tmp_path / arm / 'run.log', 1500)}")
            parts.append(f"--- {arm} uplink.log\n{tail(runs[arm] / 'uplink.log', 1500)}")
        return "\n".join(parts)

    def check_alive() -> None:
        for name, proc in [("trainer", trainer), *arms.items()]:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}\n{diagnostics()}"

    try:
        # 1. Cut arm0's link while its uplink fetches the first deployed version's weights.
        cache0 = Path(f"{roots['arm0']}-uplink-models")
        deadline = started + DEADLINE_S
        cut = None
        while cut is None:
            assert time.monotonic() < deadline, f"arm0 never fetched a version\n{diagnostics()}"
            check_alive()
            for partial in cache0.glob(".partial-v*"):
                weights = partial / "model.safetensors"
                held = weights.stat().st_size if weights.exists() else 0
                if held > 0:
                    net.cut("arm0")
                    cut = {"version": int(partial.name.removeprefix(".partial-v")), "held": held}
                    break
            time.sleep(0.02)
        version = cut["version"]
        time.sleep(CUT_S)
        # Nothing crossed the cut link: the partial fetch stands where it was cut (a chunk in a
        # socket buffer at that moment may still have landed, one at most).
        weights0 = cache0 / f".partial-v{version:04d}" / "model.safetensors"
        assert weights0.stat().st_size <= cut["held"] + CHUNK
        assert not (cache0 / f"v{version:04d}").exists()
        net.restore("arm0")
        net.delay("arm0", 0)  # the rest at full speed: arm0's backlog of episodes goes out quickly

        # 2. Wait until a version trained on both arms is deployed to both and acting on both.
        def done() -> int | None:
            for deploy in sorted(work.glob("iter-*/deploy.json")):
                report = json.loads(deploy.read_text())
                trained = {e.arm for e in read_fleet_arms(deploy.parent / "snapshot").values()}
                statuses = {arm: r["status"] for arm, r in report["arms"].items()}
                v = report["version"]
                if (
                    trained == set(ARMS)
                    and statuses == dict.fromkeys(ARMS, "swapped")
                    and v >= version
                    and all(v in acted_versions(roots[arm]) for arm in ARMS)
                ):
                    return v
            return None

        while (final := done()) is None:
            assert time.monotonic() < deadline, f"no version acting on both arms\n{diagnostics()}"
            check_alive()
            time.sleep(1.0)
        # Let each uplink ship what its arm has recorded so far (it keeps recording meanwhile).
        want = {arm: len(complete_episodes(roots[arm])) for arm in ARMS}
        until = time.monotonic() + 60
        while any(len(complete_episodes(inbox / arm)) < want[arm] for arm in ARMS):
            assert time.monotonic() < until, f"inbox behind {want}\n{diagnostics()}"
            check_alive()
            time.sleep(0.5)
    finally:
        # 4. Stop: the supervisors (SIGINT: each stops its daemon, teleop and uplink) and the trainer
        # (SIGTERM: it ends a wait for episodes or deploy reports at once, an iteration under way
        # first finishes). Whatever is left is killed with the namespaces.
        for proc, sig in [(trainer, signal.SIGTERM), *((p, signal.SIGINT) for p in arms.values())]:
            if proc.poll() is None:
                proc.send_signal(sig)
        stop_deadline = time.monotonic() + 90
        for proc in [*arms.values(), trainer]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, stop_deadline - time.monotonic()))
    stopped = {name: p.returncode for name, p in [("trainer", trainer), *arms.items()]}
    assert stopped == {"trainer": 0, "arm0": 130, "arm1": 130}, f"{stopped}\n{diagnostics()}"

    # 3. Every episode of each arm in the inbox exactly once and byte-identical, indices 0..n-1.
    for arm in ARMS:
        own, held = complete_episodes(roots[arm]), complete_episodes(inbox / arm)
        assert sorted(held) == list(range(len(held))), (arm, sorted(held))
        assert len(held) >= want[arm] >= 2, (arm, len(held), want[arm])
        assert set(held) <= set(own)
        for index, (data, meta) in held.items():
            assert (data, meta) == own[index], (arm, index)
            for relative in (data, meta):
                assert sha256(inbox / arm / relative) == sha256(roots[arm] / relative), (arm, relative)
        # Nothing else there: one data and one metadata file per episode, no leftovers.
        assert len(list((inbox / arm / "data").glob("*/*.parquet"))) == len(held)
        assert len(episode_files(inbox / arm)) == len(held)
        assert not list((inbox / arm).rglob("*.part")) and not list((inbox / arm).rglob("*.tmp"))

    # The iteration trained on episodes of both arms (its pinned union), and they are the inbox's.
    (folder,) = [
        d.parent for d in work.glob("iter-*/deploy.json") if json.loads(d.read_text())["version"] == final
    ]
    pinned = read_fleet_arms(folder / "snapshot")
    assert sorted(pinned) == json.loads((folder / "episodes.json").read_text())
    assert {e.arm for e in pinned.values()} == set(ARMS)
    for e in pinned.values():
        assert e.arm_episode_index in complete_episodes(inbox / e.arm)
    manifest = json.loads((registry / f"v{final:04d}" / "manifest.json").read_text())
    assert {key.split("/")[0] for key in manifest["metrics"]["fleet_episodes"]} == set(ARMS)
    deploy = json.loads((folder / "deploy.json").read_text())
    assert deploy["version"] == final
    for arm in ARMS:
        assert deploy["arms"][arm]["status"] == "swapped" and deploy["arms"][arm]["acting_version"] == final
        assert final in acted_versions(roots[arm])  # the arm acted with it, recorded in its own dataset
        assert (Path(f"{roots[arm]}-uplink-models") / f"v{final:04d}" / "manifest.json").exists()

    # The cut was mid-transfer and the uplink recovered from it: its weights request timed out, it
    # went on with a new socket, resumed the partial fetch and deployed the version.
    uplink0 = (runs["arm0"] / "uplink.log").read_text(errors="replace")
    assert re.search(r"no reply to weights_fetch within 10 s; trying again", uplink0), uplink0[-3000:]
    assert re.search(rf"v{version:04d} fetched", uplink0), uplink0[-3000:]
    assert re.search(rf"deploy v{version:04d}: swapped", uplink0), uplink0[-3000:]
    assert not list(cache0.glob(".partial-v*"))
    elapsed = time.monotonic() - started
    print(f"cut {cut}; final version v{final:04d}; episodes {want}; stopped {stopped}; {elapsed:.0f} s")


def test_a_stopping_trainer_does_not_wait_out_a_fleet_deploy(tmp_path):
    """SIGTERM while a deploy waits for a connected arm's report (an arm that went away, say) ends
    the wait within a second, not after --fleet.deploy_timeout_s (default 10 minutes)."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes(np.random.default_rng(0).bytes(1000))
    (folder / "config.json").write_text("{}")
    version = ModelRegistry(tmp_path / "models").publish(folder).version
    server = FleetServer(FleetConfig(bind=free_address(), inbox=tmp_path / "inbox"), tmp_path / "models")
    server.start()
    try:
        server.handle(encode(ArmPoll("arm0", None, None).to_message()))  # arm0 is connected
        reports = {}
        deploying = threading.Thread(target=lambda: reports.update(server.deploy(version, timeout_s=120)))
        started = time.monotonic()
        deploying.start()
        time.sleep(0.5)
        server.interrupt()
        deploying.join(10)
        assert not deploying.is_alive() and time.monotonic() - started < 5
    finally:
        server.stop()
    assert reports["arm0"].status == "unreachable"
    assert reports["arm0"].reason == f"no report on v{version:04d} before the trainer stopped"
