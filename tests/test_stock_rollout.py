"""The sim and pi_star_recap under stock LeRobot's `lerobot-rollout` console script.

The real script runs in a subprocess (about 10 s each, mostly imports), bounded by a timeout, with
`--robot.type=sim`, a tiny pi_star_recap checkpoint made here (no hub download) and sync inference
(one run RTC); docs/sim.md shows the same commands and their output (the RTC one: the policy's
README).

- `--strategy.type=episodic` needs no person: the policy drives every frame, each episode in its own
  scene (the sim hears the strategy's "Recording episode N", as under lerobot-record).
- `--strategy.type=dagger --teleop.type=sim_operator`: its keyboard listener reads the terminal when
  there is no X display (lerobot/utils/keyboard_input.py, TerminalKeyListener), so the test runs it
  in a pseudo-terminal and types the keys (space: pause, tab: correction on/off, space: resume, Esc:
  stop), each once the log shows the previous transition, since the strategy drops a key that is
  not valid in the phase it is in. The recorded dataset (policy, operator, policy frames) is then
  labeled by `flywheel label`. While paused, DAgger "holds" the arm by sending the policy's last
  action again each tick (unrecorded), which on the sim (a velocity command) moves the hand on, so
  the pauses here are short (0.2 s).
- `--inference.type=rtc` (episodic): LeRobot's real-time chunking engine. Its log cannot tell whether
  the policy used the previous chunk, so a sitecustomize in the child records every
  `predict_action_chunk` call (arguments, RTCProcessor steps, how close the inpainted rows came).

Flags that matter: `--return_to_initial_position=false` and, for episodic,
`--strategy.reset_to_initial_position=false`: returning to the initial position sends the robot its
observation's `.pos` values as an action, which the sim (whose actions are `.vel`) refuses, and the
strategy logs "Could not return to initial position: action: missing 'hand_x.vel'" and goes on.
`--strategy.smooth_handover=false` for DAgger: otherwise entering a correction first slides the
sim's velocity command from the policy's last one to the operator's over 1 s (31 unrecorded steps).
`--play_sounds=false`, as for lerobot-record (no `spd-say` here).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flywheel.contracts.dataset import (
    DATA_TYPE,
    INTERVENTION,
    NUM_INTERVENTION_FRAMES,
    POLICY_VERSION,
    POLICY_VERSIONS,
    SUCCESS,
    episode_files,
    read_episode_table,
)
from robots.sim.tasks import ACTION_NAMES, STATE_NAMES
from tests.test_stock_tools import replay_in_scene

BIN = Path(sys.executable).parent
# No X display: pynput could not capture keys anyway, and lerobot then reads the terminal instead.
ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")},
    "MUJOCO_GL": "egl",
    "SDL_VIDEODRIVER": "dummy",
    "SDL_AUDIODRIVER": "dummy",
}
TASK_NAME, TASK = "push-v3", "push the puck to the goal"
SEED = 3
EPISODES = 2
MARKER = [3.0, -3.0, 3.0, -3.0]  # the test policy's actions, see `policy`
COMMON = [
    "--robot.type=sim",
    f"--robot.task={TASK_NAME}",
    f"--robot.seed={SEED}",
    "--inference.type=sync",
    "--device=cpu",
    "--fps=30",
    "--dataset.fps=30",
    f"--dataset.single_task={TASK}",
    "--dataset.push_to_hub=false",
    "--play_sounds=false",
    "--return_to_initial_position=false",
]


@pytest.fixture(autouse=True)
def _root_logging():
    """`flywheel.cli.main` points the root logger at this test's stderr; the next test must not use it."""
    handlers = logging.root.handlers[:]
    yield
    logging.root.handlers[:] = handlers


def _marked_checkpoint(path: Path, marker: list[float]) -> Path:
    """The tiny random pi_star_recap, its actions unnormalized to `marker` +- a few hundredths."""
    from safetensors.torch import load_file, save_file

    from benchmarks.fixtures import tiny_sim_checkpoint

    path = tiny_sim_checkpoint(path)
    (stats_file,) = path.glob("policy_postprocessor_step_*_unnormalizer_processor.safetensors")
    stats = load_file(stats_file)
    stats["action.mean"] = torch.tensor(marker, dtype=stats["action.mean"].dtype)
    stats["action.std"] = torch.full_like(stats["action.std"], 0.01)
    save_file(stats, stats_file)
    return path


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """The tiny random pi_star_recap, its actions unnormalized to MARKER +- a few hundredths: outside
    the sim's [-1, 1] (the sim clips what it is sent, the sim operator's actions are clipped already),
    so each recorded action shows whether the policy produced it, however few frames a loaded
    machine records."""
    return _marked_checkpoint(tmp_path_factory.mktemp("policy") / "pretrained_model", MARKER)


def _from_policy(actions: np.ndarray, marker: list[float] = MARKER) -> np.ndarray:
    """Per frame: whether the action is the marked policy's (see `policy`)."""
    return np.all(np.abs(actions - np.array(marker)) < 0.5, axis=1)


def _dataset(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/rollout_sim", root=root)


def _frames(root: Path) -> pd.DataFrame:
    frames = pd.concat(pd.read_parquet(p) for p in sorted(root.glob("data/*/*.parquet")))
    return frames.sort_values("index").reset_index(drop=True)


# --- episodic: the policy drives, nobody needed -------------------------------------------------


def _episodic_rollout(
    cwd: Path, policy: Path, root: Path, inference: list[str] | None = None, env: dict = ENV
) -> str:
    """`lerobot-rollout --strategy.type=episodic` recording EPISODES episodes at `root`; `inference`
    replaces the sync inference flags. Its output, once it has exited 0."""
    common = COMMON if inference is None else [a for a in COMMON if not a.startswith("--inference.")]
    result = subprocess.run(
        [
            str(BIN / "lerobot-rollout"),
            *common,
            *(inference or []),
            f"--policy.path={policy}",
            "--strategy.type=episodic",
            "--strategy.reset_to_initial_position=false",
            "--dataset.repo_id=local/rollout_sim",
            f"--dataset.root={root}",
            f"--dataset.num_episodes={EPISODES}",
            # 3 s: the first inference alone can take over a second on a loaded 2-core machine.
            "--dataset.episode_time_s=3",
            "--dataset.reset_time_s=0",
        ],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,  # no terminal: the strategy's keyboard controls stay off
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def episodic(policy, tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("episodic")
    root = tmp / "dataset"
    return root, _episodic_rollout(tmp, policy, root)


def test_episodic_rollout_records_the_policys_episodes(episodic):
    root, output = episodic
    assert "SyncInferenceEngine initialized (device=cpu, action_keys=4)" in output  # was 0 before .vel
    assert "Could not return to initial position" not in output
    dataset = _dataset(root)
    assert dataset.meta.total_episodes == EPISODES
    assert dataset.meta.robot_type == "sim"
    assert dataset.features["observation.state"]["names"] == list(STATE_NAMES)
    assert dataset.features["action"]["names"] == list(ACTION_NAMES)
    assert INTERVENTION not in dataset.features  # only the DAgger strategy records it
    frames = _frames(root)
    assert set(frames.task_index) == {0} and dataset.meta.tasks.index.tolist() == [TASK]
    # Episodes are timed (3 s), so how many frames they get depends on the machine's load.
    assert sorted(set(frames.episode_index)) == list(range(EPISODES))
    assert _from_policy(np.stack(frames.action)).all()  # every frame's action is the policy's


def test_episodic_rollout_episodes_replay_in_their_own_scenes(episodic):
    root, output = episodic
    frames = _frames(root)
    for episode in range(EPISODES):
        assert f"recording episode {episode} in scene seed {SEED + episode}" in output
        rows = frames[frames.episode_index == episode]
        states, actions = np.stack(rows["observation.state"]), np.stack(rows.action)
        # The recorded actions are what drove the arm: sent again in the episode's scene, from its
        # first state, they give the recorded states again, frame by frame.
        replayed, _ = replay_in_scene(TASK_NAME, SEED, episode, actions)
        np.testing.assert_allclose(replayed, states, rtol=0, atol=1e-5)


# --- episodic under real-time chunking (--inference.type=rtc) ------------------------------------

# Within the sim's [-1, 1], so the recorded actions are what the sim executed (it clips nothing).
RTC_MARKER = [0.5, -0.5, 0.5, -0.5]
RTC_HORIZON = 10

# The child's sitecustomize (on its PYTHONPATH): once the policy's module is imported, it wraps
# PiStarRECAPPolicy.predict_action_chunk to write one JSON line per call to $RTC_CALLS: the RTC
# arguments the engine passed, how many times LeRobot's RTCProcessor.denoise_step ran inside the call,
# and, for a call with a previous chunk, how far the new chunk's first `inference_delay` rows (the
# inpainted ones, prefix weight 1) are from that chunk: guided, and unguided from the same noise (a
# second, plain call). Nothing of the product is changed: the console script and the policy run as
# they are.
_RTC_SITECUSTOMIZE = """
import importlib.abc, importlib.machinery, json, os, sys, threading

_MODULE = "flywheel.policies.pi_star_recap.modeling_pi_star_recap"
_LOCK = threading.Lock()
_STEPS = threading.local()


def _patch(module):
    import torch

    policy_class, processor_class = module.PiStarRECAPPolicy, module.RTCProcessor
    predict, denoise_step = policy_class.predict_action_chunk, processor_class.denoise_step

    def counted_denoise_step(self, *args, **kwargs):
        _STEPS.n = getattr(_STEPS, "n", 0) + 1
        return denoise_step(self, *args, **kwargs)

    def predict_action_chunk(self, batch, noise=None, inference_delay=None, prev_chunk_left_over=None, **kw):
        cfg = self.config
        if noise is None:
            noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim)
        _STEPS.n = 0
        chunk = predict(self, batch, noise=noise, inference_delay=inference_delay,
                        prev_chunk_left_over=prev_chunk_left_over, **kw)
        record = {
            "delay": inference_delay,
            "prev_rows": None if prev_chunk_left_over is None else int(prev_chunk_left_over.shape[-2]),
            "rtc_steps": _STEPS.n,
            "num_inference_steps": cfg.num_inference_steps,
            "horizon": None if cfg.rtc_config is None else cfg.rtc_config.execution_horizon,
        }
        rows = min(int(inference_delay or 0), record["prev_rows"] or 0)
        if rows:
            prev = prev_chunk_left_over.reshape(-1, prev_chunk_left_over.shape[-1])[:rows].float()
            plain = predict(self, batch, noise=noise)
            record["guided_error"] = float((chunk[0, :rows].float().cpu() - prev.cpu()).abs().mean())
            record["plain_error"] = float((plain[0, :rows].float().cpu() - prev.cpu()).abs().mean())
        with _LOCK, open(os.environ["RTC_CALLS"], "a") as f:
            f.write(json.dumps(record) + "\\n")
        return chunk

    processor_class.denoise_step = counted_denoise_step
    policy_class.predict_action_chunk = predict_action_chunk


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
"""


@pytest.fixture(scope="module")
def episodic_rtc(tmp_path_factory) -> tuple[Path, str, list[dict]]:
    import json

    tmp = tmp_path_factory.mktemp("episodic_rtc")
    checkpoint = _marked_checkpoint(tmp / "policy" / "pretrained_model", RTC_MARKER)
    root, calls, site = tmp / "dataset", tmp / "calls.jsonl", tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_RTC_SITECUSTOMIZE)
    repository = Path(__file__).resolve().parents[1]
    paths = [str(site), str(repository), ENV.get("PYTHONPATH", "")]
    env = {**ENV, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "RTC_CALLS": str(calls)}
    rtc = [
        "--inference.type=rtc",
        f"--inference.rtc.execution_horizon={RTC_HORIZON}",
        "--inference.rtc.max_guidance_weight=10.0",
    ]
    output = _episodic_rollout(tmp, checkpoint, root, rtc, env)
    records = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return root, output, records


@pytest.mark.timeout(240)
def test_episodic_rtc_rollout_records_the_policys_episodes(episodic_rtc):
    root, output, _ = episodic_rtc
    assert "RTCInferenceEngine initialized" in output and "RTC inference thread started" in output
    assert "RTC inference error" not in output and "Fatal error in RTC thread" not in output
    dataset = _dataset(root)
    assert dataset.meta.total_episodes == EPISODES
    frames = _frames(root)
    # Each episode records from its first chunk on (the engine's queue is empty until then).
    assert sorted(set(frames.episode_index)) == list(range(EPISODES))
    actions = np.stack(frames.action)
    assert np.isfinite(actions).all()
    assert np.abs(actions).max() <= 1.0  # within the sim's action space: sent as they were recorded
    assert _from_policy(actions, RTC_MARKER).all()


@pytest.mark.timeout(240)
def test_episodic_rtc_rollout_inpaints_each_chunk_from_the_previous_one(episodic_rtc):
    """The RTC path was taken, not only configured: the policy got a previous chunk and a delay, its
    sampling went through LeRobot's RTCProcessor at every Euler step, and the rows it inpainted
    landed near the previous chunk's (unguided, the same noise lands far from them)."""
    _, output, records = episodic_rtc
    # The policy's own warning when it is handed a previous chunk with RTC off (config.rtc_config).
    assert "rtc_config is off" not in output
    assert records, "predict_action_chunk was never called"
    assert {r["horizon"] for r in records} == {RTC_HORIZON}  # --inference.rtc.* reached the policy
    first = [r for r in records if r["prev_rows"] is None]
    rtc = [r for r in records if r["prev_rows"] is not None]
    # Each episode starts from an empty queue: a chunk without a previous one, and no guidance.
    assert len(first) >= EPISODES and all(r["rtc_steps"] == 0 for r in first)
    assert len(rtc) >= EPISODES, records  # 3 s episodes, a chunk of 50 refilled at 30 queued
    for r in rtc:
        assert r["prev_rows"] == RTC_HORIZON  # the engine pads / cuts the leftover to the horizon
        assert r["delay"] >= 1  # the measured latency, in ticks
        assert r["rtc_steps"] == r["num_inference_steps"]  # RTCProcessor.denoise_step on every step
    guided = np.array([r["guided_error"] for r in rtc])
    plain = np.array([r["plain_error"] for r in rtc])
    assert guided.mean() < 0.1 * plain.mean(), (guided, plain)


# --- DAgger: typed into a pseudo-terminal -------------------------------------------------------

# (log line to wait for, seconds to wait after it, key to type). However slow the policy's first
# inference, a policy frame is recorded before the pause and after resuming: the strategy acts on a key
# at the start of its next tick, and the tick that logs a transition records its frame.
DAGGER_KEYS = [
    ("DAgger continuous recording started", 2.0, " "),
    ("Phase transition: autonomous -> paused", 0.2, "\t"),
    ("Phase transition: paused -> correcting", 1.0, "\t"),
    ("Phase transition: correcting -> paused", 0.2, " "),
    ("Phase transition: paused -> autonomous", 1.5, "\x1b"),
]


def _run_in_terminal(args: list[str], keys: list[tuple[str, float, str]], cwd: Path, timeout: float) -> str:
    """Run `args` with a pseudo-terminal as stdin/stdout/stderr, typing each key `delay` seconds after
    its log line appears (and after the previous key was typed). Returns the output."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=ENV, start_new_session=True
    )
    os.close(slave)
    output, pending, step = b"", None, 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal (it exited)
                    break
                if not data:
                    break
                output += data
            # Each awaited line is a different one, so searching the whole output is enough.
            if pending is None and step < len(keys) and keys[step][0].encode() in output:
                pending = time.monotonic() + keys[step][1]
            if pending is not None and time.monotonic() >= pending:
                os.write(master, keys[step][2].encode())
                step, pending = step + 1, None
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-4000:]
    assert step == len(keys), f"typed {step} of {len(keys)} keys:\n{text[-4000:]}"
    return text


@pytest.fixture(scope="module")
def dagger(policy, tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("dagger")
    root = tmp / "dataset"
    output = _run_in_terminal(
        [
            str(BIN / "lerobot-rollout"),
            *COMMON,
            f"--policy.path={policy}",
            "--strategy.type=dagger",
            "--strategy.record_autonomous=true",  # the policy's frames too, not only the correction
            "--strategy.smooth_handover=false",
            "--teleop.type=sim_operator",
            "--teleop.observation_source=local",
            "--dataset.repo_id=local/rollout_sim",
            f"--dataset.root={root}",
        ],
        DAGGER_KEYS,
        cwd=tmp,
        timeout=180,
    )
    return root, output


def test_dagger_rollout_records_the_correction_as_intervention(dagger):
    root, output = dagger
    assert "Using terminal keyboard input" in output
    dataset = _dataset(root)
    assert dataset.meta.total_episodes == 1  # one continuous episode: it rotates after 300 s
    assert dataset.features[INTERVENTION] == {"dtype": "bool", "shape": (1,), "names": None}
    assert dataset.features["observation.state"]["names"] == list(STATE_NAMES)
    assert dataset.features["action"]["names"] == list(ACTION_NAMES)
    frames = _frames(root)
    flags = np.concatenate(frames[INTERVENTION].map(np.atleast_1d).to_numpy()).astype(bool)
    # policy, then the operator's correction, then the policy again: three runs of flags.
    runs = [flags[0]] + [b for a, b in itertools.pairwise(flags) if a != b]
    assert runs == [False, True, False], flags.astype(int).tolist()
    assert flags.sum() >= 3  # 1 s of correction at 30 fps, fewer on a loaded machine
    # The policy's frames have its (marked) actions; the operator's are its own, within [-1, 1].
    actions = np.stack(frames.action)
    np.testing.assert_array_equal(_from_policy(actions), ~flags)
    assert np.abs(actions[flags]).max() <= 1.0


# Corrections-only mode (the default, --strategy.record_autonomous=false): only the corrections are
# recorded, each its own episode; the run ends after --dataset.num_episodes of them.
CORRECTION_KEYS = [
    ("DAgger corrections-only recording started", 1.0, " "),
    ("Phase transition: autonomous -> paused", 0.2, "\t"),
    ("Phase transition: paused -> correcting", 0.5, "\t"),
    ("Correction 1/2 saved", 0.2, "\t"),  # a second correction, from the pause
    ("Correction 1/2 saved", 0.6, "\t"),  # (0.6 s after the key before: the line is already there)
]


def test_dagger_corrections_only_records_each_correction_as_an_episode(policy, tmp_path):
    from flywheel.cli import main

    root = tmp_path / "dataset"
    output = _run_in_terminal(
        [
            str(BIN / "lerobot-rollout"),
            *COMMON,
            f"--policy.path={policy}",
            "--strategy.type=dagger",
            "--strategy.smooth_handover=false",
            "--teleop.type=sim_operator",
            "--teleop.observation_source=local",
            "--dataset.repo_id=local/rollout_sim",
            f"--dataset.root={root}",
            "--dataset.num_episodes=2",
        ],
        CORRECTION_KEYS,
        cwd=tmp_path,
        timeout=180,
    )
    assert "Correction 2/2 saved" in output
    frames = _frames(root)
    assert sorted(set(frames.episode_index)) == [0, 1]
    flags = np.concatenate(frames[INTERVENTION].map(np.atleast_1d).to_numpy()).astype(bool)
    assert flags.all()  # the operator's frames only
    assert not _from_policy(np.stack(frames.action)).any()
    out = tmp_path / "labeled"
    assert main(["label", f"--dataset.root={root}", f"--output.root={out}", "--reward.assume_success=true",
                 "--value.steps=20", "--value.cross_fit_folds=1", "--advantage.n_step=5"]) == 0  # fmt: skip
    episodes = read_episode_table(episode_files(out))
    assert episodes[DATA_TYPE].tolist() == ["intervention", "intervention"]
    assert [list(v) for v in episodes[POLICY_VERSIONS]] == [[0], [0]]


def test_flywheel_label_takes_the_stock_dagger_dataset(dagger, tmp_path):
    from flywheel.cli import main

    root, _ = dagger
    before = _hashes(root)
    out = tmp_path / "labeled"
    code = main(
        [
            "label",
            f"--dataset.root={root}",
            f"--output.root={out}",
            "--reward.success_episodes=[0]",
            "--value.steps=20",
            "--value.cross_fit_folds=1",
            "--advantage.n_step=5",
        ]
    )
    assert code == 0
    flags = np.concatenate(_frames(root)[INTERVENTION].map(np.atleast_1d).to_numpy()).astype(bool)
    episodes = read_episode_table(episode_files(out))
    assert episodes[DATA_TYPE].tolist() == ["intervention"]
    assert episodes[SUCCESS].tolist() == [True]
    assert episodes[NUM_INTERVENTION_FRAMES].tolist() == [int(flags.sum())]
    assert [list(v) for v in episodes[POLICY_VERSIONS]] == [[0, 1]]
    labeled = _frames(out)
    # policy_version derived from `intervention`: 0 where the operator acted, 1 (unknown policy) elsewhere.
    np.testing.assert_array_equal(labeled[POLICY_VERSION].to_numpy().reshape(-1) == 0, flags)
    assert _hashes(root) == before  # the stock dataset is left as it was


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
