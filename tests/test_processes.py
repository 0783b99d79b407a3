"""The daemon, the teleop process and `flywheel run` as real processes: crash safety and the
end-to-end sim run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel.contracts.dataset import DatasetConfig, episode_table
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import EpisodeSaved, Observation
from flywheel.contracts.protocol import LatestValueSubscriber, MessageType
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.teleop_link import RemoteTeleop
from robots.sim import ACTION_NAMES, SimArmConfig
from tests.netutil import free_address
from tests.test_rollout import ConstantPolicy

ENV = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}


def flywheel(*args: str) -> list[str]:
    return [sys.executable, "-m", "flywheel.cli", *args]


def test_sigkill_mid_episode_leaves_saved_episodes_loadable_and_appendable(tmp_path):
    root, events = tmp_path / "ds", free_address()
    cmd = flywheel(
        "rollout",
        "--robot",
        "sim",
        "--local_teleop=true",
        "--fps=0",
        "--episodes=0",
        f"--dataset.root={root}",
        f"--wire.daemon_events={events}",
        f"--wire.teleop_state={free_address()}",
        f"--wire.deploy={free_address()}",
    )
    ctx = zmq.Context.instance()
    sub = LatestValueSubscriber(ctx, [events], [MessageType.EPISODE_SAVED, MessageType.OBSERVATION]).start()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        killed_at = None
        while time.monotonic() < deadline:
            saved = sub.latest(MessageType.EPISODE_SAVED)
            obs = sub.latest(MessageType.OBSERVATION)
            saved = saved and EpisodeSaved.from_message(saved.message)
            obs = obs and Observation.from_message(obs.message)
            # Mid-episode: two episodes saved, and a later one than the last saved is 50+ frames in.
            if (
                saved
                and obs
                and saved.episode_index >= 1
                and obs.frame >= 50
                and obs.episode > saved.episode_index
            ):
                proc.send_signal(signal.SIGKILL)
                killed_at = obs
                break
            time.sleep(0.005)
        assert killed_at is not None, "the daemon never got two episodes saved and a third under way"
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.stop()

    dataset = LeRobotDataset("test/killed", root=root)
    saved_episodes = dataset.num_episodes
    assert saved_episodes >= 2
    assert saved_episodes <= killed_at.episode  # the episode in progress is not there
    table = episode_table(dataset)
    assert table["length"].sum() == dataset.num_frames
    frames_before = dataset.num_frames
    files_before = {p: p.read_bytes() for p in (root / "data").rglob("*.parquet")}

    # A restart appends after what was saved, without touching it.
    subprocess.run(
        [arg if arg != "--episodes=0" else "--episodes=1" for arg in cmd],
        env=ENV,
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dataset = LeRobotDataset("test/killed", root=root)
    assert dataset.num_episodes == saved_episodes + 1
    assert dataset.num_frames > frames_before
    assert all(path.read_bytes() == content for path, content in files_before.items())
    assert list(episode_table(dataset)["episode_index"]) == list(range(saved_episodes + 1))


def test_flywheel_run_records_episodes_with_interventions_as_printed(tmp_path):
    root = tmp_path / "ds"
    out = subprocess.run(
        flywheel(
            "run",
            "--robot",
            "sim",
            "--episodes",
            "3",
            "--fps=0",
            f"--dataset.root={root}",
            f"--wire.daemon_events={free_address()}",
            f"--wire.teleop_state={free_address()}",
            f"--wire.deploy={free_address()}",
            f"--run_dir={tmp_path / 'run'}",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(True|False)\s+(\w+)\s+(\d+)\s+yes\s+(\w+)$", out.stdout, re.M)
    assert len(rows) == 3, out.stdout

    dataset = LeRobotDataset("test/run", root=root)
    table = episode_table(dataset)
    assert len(table) == 3
    for (_, frames, success, data_type, interventions, _), (_, row) in zip(
        rows, table.iterrows(), strict=True
    ):
        assert row["length"] == int(frames)
        assert bool(row["success"]) == (success == "True")
        assert row["data_type"] == data_type
        assert row["num_intervention_frames"] == int(interventions)
    assert (table["num_intervention_frames"] > 0).any()

    # The per-frame tags agree with the per-episode counts.
    frames = dataset.hf_dataset.with_format("numpy")[:]
    flags, episode = frames["intervention"].reshape(-1), frames["episode_index"].reshape(-1)
    for index, row in table.iterrows():
        assert flags[episode == index].sum() == row["num_intervention_frames"]
    assert Path(tmp_path / "run" / "teleop.log").exists()


@pytest.mark.timeout(180)
def test_flywheel_run_restarts_a_killed_child_with_backoff_and_says_so(tmp_path):
    """SIGKILL `flywheel run`'s teleop child after the first episode: the supervisor says so,
    restarts it after its 1 s backoff, and the run still ends normally with every episode saved."""
    root = tmp_path / "ds"
    cmd = flywheel(
        "run", "--robot", "sim", "--episodes", "4", "--fps=30", "--episode_time_s=2",
        f"--dataset.root={root}", f"--wire.daemon_events={free_address()}",
        f"--wire.teleop_state={free_address()}", f"--wire.deploy={free_address()}",
        f"--run_dir={tmp_path / 'run'}",
    )  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []  # stderr: the supervisor's and the daemon's logs, read as they come
    stdout: list[str] = []
    readers = [
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True),
        threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True),
    ]
    for reader in readers:
        reader.start()

    def started(name: str) -> list[int]:
        return [int(m) for line in list(lines) for m in re.findall(rf"started {name} \(pid (\d+)\)", line)]

    try:
        deadline = time.monotonic() + 90
        while not (started("teleop") and started("rollout")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [first] = started("teleop")
        while not any("episode 0:" in line for line in list(lines)) and time.monotonic() < deadline:
            time.sleep(0.05)  # mid-run: the first episode recorded with the operator connected
        os.kill(first, signal.SIGKILL)
        proc.wait(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    for reader in readers:
        reader.join(timeout=10)
    log = "".join(lines)
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r"teleop exited with -9; restarting in 1 s \(1/\d+\)", log), log[-3000:]
    teleops = started("teleop")
    assert len(teleops) == 2 and teleops[1] != first, log[-3000:]
    table = "".join(stdout)
    assert len(re.findall(r"^\s+\d+\s+\d+\s+(?:True|False)\s+\w+\s+\d+\s+yes\s+\w+$", table, re.M)) == 4
    assert LeRobotDataset("test/run", root=root).num_episodes == 4


# --- the teleop process SIGKILLed mid-intervention -------------------------------------------------

FPS = 30
PEDAL_DOWN = (5, 45)  # the teleop process's scheduled pedal: down on these frames of every episode


@dataclass
class Tick:
    t: float  # time.monotonic() when the daemon asked the link for the operator's state
    episode: int  # the daemon's attempt number (= the dataset's episode index when all are saved)
    frame: int
    pressed: bool
    action: np.ndarray | None  # the operator's command, in the sim's action order
    age_s: float


class LoggedRemoteTeleop(RemoteTeleop):
    """The daemon's real ZeroMQ link to `flywheel teleop`, noting what it gave the daemon each tick."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ticks: list[Tick] = []

    def poll(self, view, wait):
        t = time.monotonic()
        snapshot = super().poll(view, wait)
        action = None if snapshot.action is None else np.array([snapshot.action[n] for n in ACTION_NAMES])
        self.ticks.append(Tick(t, view.episode, view.frame, snapshot.pressed, action, snapshot.age_s))
        return snapshot


def _start_teleop(wire: WireConfig, log: Path) -> subprocess.Popen:
    cmd = flywheel(
        "teleop",
        "--robot",
        "sim",  # the simulated operator, watching the daemon's observations
        "--pedal.type=schedule",
        f"--pedal.down=[[{PEDAL_DOWN[0]},{PEDAL_DOWN[1]}]]",
        f"--wire.daemon_events={wire.daemon_events}",
        f"--wire.teleop_state={wire.teleop_state}",
        f"--wire.deploy={wire.deploy}",
    )
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT)


def _wait_until(condition, timeout_s: float, what: str, daemon: threading.Thread):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert daemon.is_alive(), f"the daemon stopped while waiting for {what}"
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"no {what} within {timeout_s:.0f} s")


@pytest.mark.timeout(120)
def test_sigkill_of_the_teleop_process_mid_intervention_holds_then_resumes_after_a_restart(tmp_path):
    """`flywheel teleop` SIGKILLed with the pedal down: the daemon ticks on and holds within
    teleop_timeout_ms (never replaying the dead operator's last command), the episode in progress is
    saved whole; a new teleop process on the same address is heard again, and the dataset has every
    tick exactly once."""
    root = tmp_path / "ds"
    wire = WireConfig(daemon_events=free_address(), teleop_state=free_address(), deploy=free_address())
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3", seed=3),
        dataset=DatasetConfig(root=root, repo_id="test/teleop_killed"),
        wire=wire,
        episodes=0,
        fps=FPS,
        episode_time_s=2.0,  # 60 frames
        report_cadence=False,
    )
    timeout_s = cfg.teleop_timeout_ms / 1000
    ctx = zmq.Context.instance()
    link = LoggedRemoteTeleop(ctx, wire.teleop_state, cfg.lockstep_timeout_ms / 1000)
    daemon = RolloutDaemon(cfg, policy=ConstantPolicy(), link=link)
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(daemon.run()), name="test-daemon")
    saved = LatestValueSubscriber(ctx, [wire.daemon_events], [MessageType.EPISODE_SAVED]).start()

    def saved_up_to(index: int) -> bool:
        latest = saved.latest(MessageType.EPISODE_SAVED)
        return latest is not None and EpisodeSaved.from_message(latest.message).episode_index >= index

    def driven(k: Tick) -> bool:
        """The operator drove this tick: pedal down and a state fresh enough to act on."""
        return k.pressed and k.action is not None and k.age_s <= timeout_s

    def operator_ticks(since: float) -> list[Tick]:
        return [k for k in list(link.ticks) if k.t > since and driven(k)]

    def now_driving(episode: int, frames: range) -> bool:
        newest = link.ticks[-1] if link.ticks else None
        return newest is not None and newest.episode == episode and newest.frame in frames and driven(newest)

    first = _start_teleop(wire, tmp_path / "teleop-1.log")
    second = None
    killed_episode = 1
    try:
        runner.start()  # the daemon waits until it hears the teleop process
        # Mid-intervention in the second episode, the first one saved: SIGKILL the teleop process.
        _wait_until(
            lambda: saved_up_to(killed_episode - 1) and now_driving(killed_episode, range(15, 35)),
            90,
            "the operator driving in the middle of episode 1",
            runner,
        )
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        killed_at = time.monotonic()
        # With no teleop process, the episode in progress runs to its end and is saved; the next starts.
        _wait_until(
            lambda: (
                saved_up_to(killed_episode)
                and any(k.episode > killed_episode and k.t > killed_at + timeout_s for k in list(link.ticks))
            ),
            30,
            "the killed episode saved and the next one under way",
            runner,
        )
        # A new teleop process on the same address: the operator drives again.
        restarted_at = time.monotonic()
        second = _start_teleop(wire, tmp_path / "teleop-2.log")
        resumed = _wait_until(
            lambda: operator_ticks(restarted_at), 60, "operator input after the restart", runner
        )
        resumed_episode = resumed[0].episode
        _wait_until(
            lambda: link.ticks[-1].episode > resumed_episode, 30, "the resumed episode to end", runner
        )
        daemon.stop()  # the episode just begun is discarded, as on any stop
        runner.join(timeout=60)
        assert not runner.is_alive()
        second.terminate()
        assert second.wait(timeout=10) == 0  # the restarted teleop process stops cleanly
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if runner.is_alive():
            daemon.stop()
            runner.join(timeout=60)
        saved.stop()

    ticks = list(link.ticks)
    # Every attempt but the last (stopped) was saved, the killed one included.
    assert [r.end_reason for r in results][-1] == "stopped"
    kept = results[:-1]
    assert all(r.data_type is not None and r.saved for r in kept), results
    assert len(kept) > resumed_episode > killed_episode

    # Nothing lost, nothing duplicated: each saved episode holds exactly the ticks the daemon ran.
    dataset = LeRobotDataset("test/teleop_killed", root=root)
    frames = dataset.hf_dataset.with_format("numpy")[:]
    episode, frame = frames["episode_index"].reshape(-1), frames["frame_index"].reshape(-1)
    assert dataset.num_episodes == len(kept)
    assert list(frames["index"].reshape(-1)) == list(range(dataset.num_frames))
    assert list(episode_table(dataset)["episode_index"]) == list(range(len(kept)))
    by_tick = {(k.episode, k.frame): k for k in ticks}
    assert len(by_tick) == len(ticks)
    expected = [(k.episode, k.frame) for k in ticks if k.episode < len(kept)]
    assert list(zip(episode.tolist(), frame.tolist(), strict=True)) == expected
    for r in kept:
        assert list(frame[episode == r.index]) == list(range(r.frames))
    row = {key: i for i, key in enumerate(expected)}
    action = frames["action"]
    intervention = frames["intervention"].reshape(-1).astype(bool)
    # Tagged as interventions: exactly the ticks the operator's command drove.
    assert [bool(intervention[row[key]]) for key in expected] == [driven(by_tick[key]) for key in expected]

    # Before the kill, and again after the restart, the operator's commands were sent as given.
    operated = [k for k in operator_ticks(0.0) if k.episode < len(kept)]
    before = [k for k in operated if k.t < killed_at]
    after = [k for k in operated if k.t > restarted_at]
    assert before and after
    assert {k.episode for k in before} == {0, killed_episode}
    for k in operated:
        np.testing.assert_array_equal(action[row[(k.episode, k.frame)]], k.action)
    assert np.any(before[-1].action != 0.0)  # the dead operator's last command was not a hold

    # After the kill: the loop ran on; from teleop_timeout_ms on, every tick held (zero deltas on the
    # sim), pedal last seen down, yet not tagged as an intervention, until the new teleop process started.
    dead = [k for k in ticks if killed_at + timeout_s < k.t < restarted_at]
    assert {k.episode for k in dead} >= {killed_episode, killed_episode + 1}
    down = [k.t for k in ticks if killed_at < k.t < restarted_at]
    assert max(np.diff([killed_at, *down, restarted_at])) < 0.5  # never stalled
    assert all(k.pressed for k in dead)
    for k in dead:
        sent = action[row[(k.episode, k.frame)]]
        np.testing.assert_array_equal(sent, np.zeros_like(sent))
        assert not intervention[row[(k.episode, k.frame)]]
    # The killed episode: ticked to its end (timeout), with the kill in its middle.
    killed = kept[killed_episode]
    assert killed.end_reason == "timeout" and killed.frames == cfg.max_episode_steps
    assert by_tick[(killed_episode, 0)].t < killed_at < by_tick[(killed_episode, killed.frames - 1)].t
