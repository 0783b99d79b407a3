"""The benchmark cases. Each returns a flat dict of figures; `quick` makes it smaller, not different.

Tick timing is measured the same way for every loop (flywheel's and LeRobot's): the start time of
each tick is taken when the loop reads the robot (a wrapper around `get_observation`), and a tick's
lateness is how much longer than one control period (33.3 ms) it came after the previous tick.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.fixtures import SIM_ACTION_DIM, SIM_STATE_DIM, tiny_sim_checkpoint
from benchmarks.handover import handover
from benchmarks.remote import free_loopback, remote_policy
from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.messages import DeployRequest
from flywheel.contracts.registry import ModelRegistry
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.daemon import RolloutDaemon
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.teleop_link import LocalTeleop
from robots.sim import STATE_NAMES, SimArm, SimArmConfig
from teleop.pedals import ConstantPedal, ConstantPedalConfig, SimPedalConfig
from teleop.sim_operator import SimOperator, SimOperatorConfig
from trainer.evaluate import EVAL_SEED_OFFSET

FPS = 30
PERIOD_MS = 1000 / FPS


def percentiles(values_ms: list[float], prefix: str) -> dict[str, float]:
    v = np.asarray(values_ms, dtype=float)
    return {
        f"{prefix}_p50_ms": float(np.percentile(v, 50)),
        f"{prefix}_p99_ms": float(np.percentile(v, 99)),
        f"{prefix}_max_ms": float(v.max()),
    }


class TickClock:
    """Timestamps each call of robot.get_observation (the start of a control tick)."""

    def __init__(self, robot):
        self.starts: list[float] = []
        original = robot.get_observation

        def timed():
            self.starts.append(time.perf_counter())
            return original()

        robot.get_observation = timed

    def intervals_ms(self) -> list[float]:
        return list(np.diff(self.starts) * 1000)

    def lateness_ms(self, boundary_ms: float = 500.0) -> list[float]:
        """Per tick, how much longer than a period it came after the previous one. Intervals over
        `boundary_ms` are episode boundaries (scene reset), left out; `lerobot_record_loop` reports
        the boundary gaps separately."""
        return [max(0.0, d - PERIOD_MS) for d in self.intervals_ms() if d < boundary_ms]


def _daemon(
    policy_path: Path | None,
    frames: int,
    episodes: int,
    fps: int,
    root: Path,
    record: bool = True,
    pedal_down: bool = False,
) -> RolloutDaemon:
    """The daemon on the sim arm with the simulated operator: the policy acts (pedal up), or with
    `pedal_down` the operator drives every frame, as under `flywheel record` (no policy needed)."""
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"),
        policy=PolicySourceConfig(path=policy_path),
        dataset=DatasetConfig(root=root, repo_id="bench/loop", record=record),
        wire=WireConfig.in_process("bench"),
        episodes=episodes,
        fps=fps,
        episode_time_s=frames / (fps or FPS),
        report_cadence=False,
    )
    pedal = ConstantPedal(ConstantPedalConfig(pressed=pedal_down))
    return RolloutDaemon(cfg, link=LocalTeleop(SimOperator(SimOperatorConfig()), pedal))


def control_loop(work: Path, quick: bool) -> dict[str, Any]:
    """Tick lateness at 30 Hz with the tiny policy (chunk 50, refilled in a worker thread), alone and
    while a training process runs beside it."""
    policy = tiny_sim_checkpoint(work / "policy")
    frames, episodes = (150, 2) if quick else (300, 4)
    out: dict[str, Any] = {}
    for label, with_trainer in (("alone", False), ("training", True)):
        trainer = _background_training(work / f"train-{label}") if with_trainer else None
        try:
            daemon = _daemon(policy, frames, episodes, FPS, work / f"loop-{label}")
            clock = TickClock(daemon.robot)
            results = daemon.run()
        finally:
            if trainer is not None:
                trainer.terminate()
                trainer.wait(timeout=30)
        out |= percentiles(clock.lateness_ms(), f"lateness_{label}")
        out[f"held_ticks_{label}"] = sum(r.policy_misses for r in results)
        out[f"ticks_{label}"] = len(clock.starts)
    return out


def _background_training(folder: Path) -> subprocess.Popen:
    """A CPU-bound training process (the trainer's policy training on a fresh sim dataset)."""
    script = (
        "import torch, time\n"
        "from benchmarks.fixtures import tiny_sim_policy_config\n"
        "from flywheel.policies.pi_star_recap import PiStarRECAPPolicy\n"
        "p = PiStarRECAPPolicy(tiny_sim_policy_config()); opt = torch.optim.AdamW(p.parameters())\n"
        "b = {'observation.state': torch.randn(32, 39), 'action': torch.randn(32, 50, 4),\n"
        "     'action_is_pad': torch.zeros(32, 50, dtype=torch.bool), 'task': ['push'] * 32}\n"
        "while True:\n"
        "    loss, _ = p(b); loss.backward(); opt.step(); opt.zero_grad()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(8)  # let it get to the training loop before the control loop starts
    return proc


def hot_swap(work: Path, quick: bool) -> dict[str, Any]:
    """Worst tick lateness while versions are swapped into the running daemon, over one period."""
    registry = ModelRegistry(work / "models")
    for seed in (0, 1):
        registry.publish(tiny_sim_checkpoint(work / f"ckpt-{seed}", seed=seed))
    swaps = 3 if quick else 8
    daemon = _daemon(registry.path(1), frames=60 + swaps * 45, episodes=1, fps=FPS, root=work / "swap")
    clock = TickClock(daemon.robot)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    swap_ticks, statuses = [], []
    try:
        _wait(lambda: len(clock.starts) > 30)
        for i in range(swaps):
            version = 2 if i % 2 == 0 else 1
            deploy = DeployRequest.of_version(registry, version)
            reply = daemon.deploy(deploy, timeout_s=60)
            statuses.append(reply.status)
            swap_ticks.append(len(clock.starts))
            time.sleep(1.0)
    finally:
        runner.join(timeout=120)
    late = [max(0.0, d - PERIOD_MS) for d in clock.intervals_ms()]  # one episode: no boundary
    # The reply comes after the swap; loading and checking ran during the preceding second.
    around = [late[j] for t in swap_ticks for j in range(max(0, t - 30), min(len(late), t + 5))]
    return {
        "swaps": swaps,
        "swaps_done": statuses.count("swapped"),
        "worst_lateness_during_swaps_ms": max(around),
        "swap_stall_over_period": max(around) / PERIOD_MS,
        **percentiles(late, "lateness_whole_run"),
    }


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark: condition not reached")
        time.sleep(0.01)


def select_action(work: Path, quick: bool) -> dict[str, Any]:
    """Latency of one action chunk (chunk 50, 10 denoising steps), unguided and with CFG beta=2, on
    one torch thread (the daemon's default, policy.torch_threads) and, for comparison, on two.

    The two policies take turns call by call, so that a slower or faster stretch of the machine
    falls on both alike instead of on whichever ran during it."""
    from flywheel.contracts.dataset import dataset_features
    from flywheel.rollout.policy_source import LeRobotChunkPolicy
    from robots.sim import ACTION_NAMES

    features = dataset_features({n: float for n in STATE_NAMES}, {n: float for n in ACTION_NAMES}, False)
    obs = dict.fromkeys(STATE_NAMES, 0.1)
    calls = 20 if quick else 60
    threads_before = torch.get_num_threads()
    out: dict[str, Any] = {"torch_threads": 1}
    for threads, suffix in ((1, ""), (2, "_2threads")):
        torch.set_num_threads(threads)
        policies = {}
        for label, beta in (("unguided", 1.0), ("cfg2", 2.0)):
            checkpoint = tiny_sim_checkpoint(work / f"{label}{suffix}", cfg_scale=beta)
            policies[label] = LeRobotChunkPolicy(
                checkpoint, features, list(ACTION_NAMES), version=0, device="cpu"
            )
        times: dict[str, list[float]] = {label: [] for label in policies}
        for call in range(5 + calls):
            for label, policy in policies.items():
                start = time.perf_counter()
                policy.predict_chunk(obs, "push the puck to the goal")
                if call >= 5:  # the first calls warm up allocator and caches
                    times[label].append((time.perf_counter() - start) * 1000)
        for label, values in times.items():
            out |= percentiles(values, f"chunk_{label}{suffix}")
        ratio = out[f"chunk_cfg2{suffix}_p50_ms"] / out[f"chunk_unguided{suffix}_p50_ms"]
        out[f"cfg_over_unguided{suffix}_p50"] = ratio
    torch.set_num_threads(threads_before)
    return out


def training(work: Path, quick: bool) -> dict[str, Any]:
    """Training speed of the tiny policy, batch 32 (forward + backward + AdamW step).

    `train_step_ms` / `train_samples_per_s`: a synthetic batch at chunk 50, the current prompt, torch's
    default thread count (the figure this case has always reported).
    `chunk10_*`: the demo's setting (chunk 10, one torch thread, state [39], action [4]) with the current
    tiny prompt (`prompt_task_only`: the task text alone) and the earlier one
    (`prompt_with_state_and_indicator`: state_in_prompt and indicator_in_prompt, i.e. 39 discretized
    state tokens and "Advantage: positive;" in the prompt), the two models alternating in rounds so
    that a slow stretch of the machine falls on both.
    `loop_*`: the whole loop of `trainer.train_policy` (data loading, preprocessor, forward, backward,
    clipping, step, scheduler) on a recorded sim dataset, chunk 10, one torch thread, with state-only
    frames served from memory (`frames_in_memory`) and from LeRobotDataset per row (`lerobot_dataset`).
    Set-up (dataset, policy, accelerate, the final checkpoint) is taken out by difference: each way runs
    a short and a long training, and ms per step is (long wall - short wall) / (long - short steps);
    `loop_*_setup_s` is what remains of the short run."""
    out = _synthetic_training(chunk=50, steps=10 if quick else 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo's setting (DemoConfig.torch_threads)
    try:
        out |= _prompt_comparison(rounds=3 if quick else 6, steps=4 if quick else 8)
        out |= _training_loop(work, quick)
    finally:
        torch.set_num_threads(threads)
    return out


def _training_batch(chunk: int, batch: int = 32) -> dict[str, Any]:
    return {
        "observation.state": torch.randn(batch, SIM_STATE_DIM),
        "action": torch.randn(batch, chunk, SIM_ACTION_DIM),
        "action_is_pad": torch.zeros(batch, chunk, dtype=torch.bool),
        "task": ["push the puck to the goal"] * batch,
    }


def _trainable(chunk: int, **overrides):
    from benchmarks.fixtures import tiny_sim_policy_config
    from flywheel.policies.pi_star_recap import PiStarRECAPPolicy

    torch.manual_seed(0)
    policy = PiStarRECAPPolicy(tiny_sim_policy_config(chunk, **overrides))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        loss, _ = policy(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def _synthetic_training(chunk: int, steps: int) -> dict[str, Any]:
    step, batch = _trainable(chunk), _training_batch(chunk)
    for _ in range(3):  # warm-up
        step(batch)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    elapsed = time.perf_counter() - start
    return {"train_samples_per_s": steps * 32 / elapsed, "train_step_ms": elapsed / steps * 1000}


def _prompt_comparison(rounds: int, steps: int) -> dict[str, Any]:
    prompts = {
        "prompt_task_only": {},
        "prompt_with_state_and_indicator": {"state_in_prompt": True, "indicator_in_prompt": True},
    }
    models = {label: _trainable(10, **overrides) for label, overrides in prompts.items()}
    batch = _training_batch(10)
    for step in models.values():
        for _ in range(3):  # warm-up
            step(batch)
    spent = dict.fromkeys(models, 0.0)
    for r in range(rounds):
        for label in list(models) if r % 2 == 0 else list(models)[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                models[label](batch)
            spent[label] += time.perf_counter() - start
    out: dict[str, Any] = {}
    for label, seconds in spent.items():
        out[f"chunk10_{label}_step_ms"] = seconds / (rounds * steps) * 1000
        out[f"chunk10_{label}_samples_per_s"] = rounds * steps * 32 / seconds
    out["chunk10_prompt_with_state_and_indicator_over_task_only"] = (
        spent["prompt_with_state_and_indicator"] / spent["prompt_task_only"]
    )
    return out


def _record_sim_episodes(root: Path, episodes: int, episode_time_s: float = 6.67) -> None:
    """Sim episodes recorded by the rollout daemon in lockstep, the simulated operator at the pedal:
    `flywheel rollout --robot sim --local_teleop=true --fps=0` (configs/robots/sim.yaml)."""
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"),
        teleop=SimOperatorConfig(skill="good"),
        pedal=SimPedalConfig(),
        local_teleop=True,
        policy=PolicySourceConfig(baseline="random"),
        dataset=DatasetConfig(root=root),
        wire=WireConfig.in_process("bench"),
        episodes=episodes,
        fps=0,
        episode_time_s=episode_time_s,
        report_cadence=False,
    )
    RolloutDaemon(cfg).run()


def _training_loop(work: Path, quick: bool) -> dict[str, Any]:
    from trainer.train_policy import TrainPolicyConfig, train_policy

    _record_sim_episodes(work / "loop-data", 2, episode_time_s=5)
    init = tiny_sim_checkpoint(work / "loop-init", chunk_size=10)
    short, long = (5, 20) if quick else (20, 60)
    rounds = 1 if quick else 2
    ways = {"frames_in_memory": True, "lerobot_dataset": False}
    wall: dict[tuple[str, int], float] = {}
    for r in range(rounds):
        for label in list(ways) if r % 2 == 0 else list(ways)[::-1]:
            for steps in (short, long):
                cfg = TrainPolicyConfig(
                    dataset_root=work / "loop-data",
                    init_from=init,
                    output_dir=work / f"loop-{label}-{steps}-{r}",
                    steps=steps,
                    batch_size=32,
                    seed=r,
                    device="cpu",
                    save_every=10**9,
                    log_every=10**9,
                    trackers=[],
                    frames_in_memory=ways[label],
                )
                start = time.perf_counter()
                train_policy(cfg)
                wall[label, steps] = wall.get((label, steps), 0.0) + time.perf_counter() - start
    out: dict[str, Any] = {}
    for label in ways:
        per_step = (wall[label, long] - wall[label, short]) / (rounds * (long - short))
        out[f"loop_{label}_step_ms"] = per_step * 1000
        out[f"loop_{label}_samples_per_s"] = 32 / per_step
        out[f"loop_{label}_setup_s"] = wall[label, short] / rounds - short * per_step
    out["loop_lerobot_dataset_over_frames_in_memory"] = (
        out["loop_lerobot_dataset_step_ms"] / out["loop_frames_in_memory_step_ms"]
    )
    return out


def recording(work: Path, quick: bool) -> dict[str, Any]:
    """What recording costs the control thread: per-tick work in lockstep, with and without it."""
    policy = tiny_sim_checkpoint(work / "policy")
    episodes = 3 if quick else 8
    out: dict[str, Any] = {}
    for label, record in (("recording", True), ("not_recording", False)):
        daemon = _daemon(policy, frames=200, episodes=episodes, fps=0, root=work / label, record=record)
        clock = TickClock(daemon.robot)
        daemon.run()
        within = [d for d in clock.intervals_ms() if d < 500]  # ticks inside episodes
        out[f"tick_{label}_mean_ms"] = float(np.mean(within))
    out["recording_overhead_per_frame_ms"] = out["tick_recording_mean_ms"] - out["tick_not_recording_mean_ms"]
    return out


def lerobot_record_loop(work: Path, quick: bool) -> dict[str, Any]:
    """LeRobot's own record loop (lerobot-record's `record_loop` + `save_episode`) against the flywheel
    daemon, on the same sim arm, timed the same way across episode boundaries. LeRobot 0.6's
    record_loop is teleop-only (policies moved to lerobot-rollout, which cannot drive the sim arm:
    docs/benchmarks.md), so both loops record the simulated operator (the daemon with its pedal
    held down, as `flywheel record` does)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.processor.factory import make_default_processors
    from lerobot.scripts.lerobot_record import record_loop

    from flywheel.contracts.dataset import dataset_features

    frames, episodes = (90, 2) if quick else (150, 4)
    robot = SimArm(SimArmConfig(task="push-v3"))
    features = dataset_features(robot.observation_features, robot.action_features, False)
    dataset = LeRobotDataset.create(
        "bench/lerobot",
        FPS,
        features={k: v for k, v in features.items() if k.startswith(("observation", "action"))},
        root=work / "lerobot",
        robot_type="sim",
        use_videos=False,
    )
    operator = SimOperator(SimOperatorConfig(observation_source="local"))
    processors = make_default_processors()
    clock = TickClock(robot)
    robot.connect()
    operator.connect()
    saves = []
    for _ in range(episodes):
        robot.reset_episode()
        record_loop(
            robot=robot,
            events={"exit_early": False},
            fps=FPS,
            teleop_action_processor=processors[0],
            robot_action_processor=processors[1],
            robot_observation_processor=processors[2],
            dataset=dataset,
            teleop=operator,
            control_time_s=frames / FPS,
            single_task="push the puck to the goal",
        )
        start = time.perf_counter()
        dataset.save_episode()
        saves.append((time.perf_counter() - start) * 1000)
    operator.disconnect()
    robot.disconnect()
    lerobot_intervals = clock.intervals_ms()

    daemon = _daemon(None, frames, episodes, FPS, work / "flywheel", pedal_down=True)
    flywheel_clock = TickClock(daemon.robot)
    daemon.run()
    flywheel_intervals = flywheel_clock.intervals_ms()
    return {
        **percentiles(clock.lateness_ms(), "lerobot_lateness"),
        **percentiles(flywheel_clock.lateness_ms(), "flywheel_lateness"),
        "lerobot_save_episode_ms_mean": float(np.mean(saves)),
        "lerobot_worst_gap_ms": float(max(lerobot_intervals)),
        "flywheel_worst_gap_ms": float(max(flywheel_intervals)),
    }


def labeling(work: Path, quick: bool) -> dict[str, Any]:
    """`flywheel label` wall time on recorded sim episodes, and value inference batched vs one frame
    at a time (the labeling's inner loop)."""
    from benchmarks.value_inference import one_at_a_time
    from flywheel.recap.labeling import LabelConfig, run_labeling
    from flywheel.recap.source import load_source
    from flywheel.recap.train_value import load_value_model, predict

    episodes = 6 if quick else 20
    _record_sim_episodes(work / "data", episodes)
    cfg = LabelConfig()
    cfg.dataset.root, cfg.output.root = work / "data", work / "labeled"
    start = time.perf_counter()
    run_labeling(cfg)
    wall = time.perf_counter() - start
    source = load_source(work / "data")
    fitted = load_value_model(work / "labeled" / "meta" / "recap_value")
    frames = np.arange(len(source.frames))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    predict(fitted, source, frames, 2048)
    batched = len(frames) / (time.perf_counter() - start)
    single = one_at_a_time(fitted, source, min(500, len(frames)), False)
    torch.set_num_threads(threads)
    return {
        "episodes": episodes,
        "frames": len(frames),
        "label_wall_s": wall,
        "value_fps_batched": batched,
        "value_fps_one_at_a_time": single,
        "batched_over_one_at_a_time": batched / single,
    }


def evaluation(work: Path, quick: bool) -> dict[str, Any]:
    """Held-out scene evaluation throughput, tiny pi_star_recap (chunk 10, untrained: every episode
    runs the whole 150-step horizon), push-v3: the daemon path (trainer/evaluate.py, one scene after
    another, recorded) against the batched one (trainer/evaluate_batched.py) at batch sizes 1, 10,
    25 (the demo's) and 50, with the batched runs' time split between the policy and the sim.
    Connecting the sim arms is timed apart: the batched evaluator keeps them for the next
    evaluation in the process."""
    from trainer.evaluate import scenes_in_sim
    from trainer.evaluate_batched import release_sim_arms, scenes_batched, sim_arms

    task, horizon = "push-v3", 150
    policy = tiny_sim_checkpoint(work / "policy", chunk_size=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the daemon's and the demo's setting (policy.torch_threads)
    release_sim_arms()
    try:
        start = time.perf_counter()
        sim_arms(task, EVAL_SEED_OFFSET, 50)
        out: dict[str, Any] = {"arm_connect_s": (time.perf_counter() - start) / 50}
        episodes = 2 if quick else 6
        start = time.perf_counter()
        daemon = scenes_in_sim(policy, task, episodes, work / "daemon", horizon=horizon)
        out |= _throughput("daemon", episodes, sum(o.steps for o in daemon), time.perf_counter() - start)
        for batch, episodes in ((1, 2 if quick else 6), (10, 10 if quick else 20), (25, 25), (50, 50)):
            start = time.perf_counter()
            run = scenes_batched(policy, task, episodes, EVAL_SEED_OFFSET, horizon, batch)
            out |= _throughput(f"batch{batch}", episodes, run.env_steps, time.perf_counter() - start)
            out[f"batch{batch}_policy_share"] = run.policy_s / (run.policy_s + run.sim_s)
            out[f"batch{batch}_policy_ms_per_call"] = run.policy_s / run.policy_calls * 1000
            out[f"batch{batch}_sim_ms_per_step"] = run.sim_s / run.env_steps * 1000
        out["batch50_over_daemon"] = out["batch50_episodes_per_s"] / out["daemon_episodes_per_s"]
        return out
    finally:
        release_sim_arms()
        torch.set_num_threads(threads)


# MT50 tasks for the sim_step case: push and pick-place test finger-object contact every step (the
# scan fast_metaworld.py replaces) and read the puck's rotation with scipy; door-open and reach only
# read a rotation; drawer-open neither (only the observation builder is replaced).
SIM_STEP_TASKS = ("push-v3", "pick-place-v3", "door-open-v3", "reach-v3", "drawer-open-v3")


def sim_step(work: Path, quick: bool) -> dict[str, Any]:
    """The sim arm's step (`SimArm.send_action`: MetaWorld's step and the arm's own work) under
    each task's scripted expert, with robots/sim/fast_metaworld.py and without it (MetaWorld's own
    code), in the same scenes, alternating one episode each way so that a slow stretch of the
    machine falls on both. The expert's action is computed outside the timed call."""
    from robots.sim import ACTION_NAMES, fast_metaworld

    episodes, steps = (2, 100) if quick else (6, 150)
    out: dict[str, Any] = {}
    for task in SIM_STEP_TASKS:
        arms: dict[bool, SimArm] = {}
        for fast in (True, False):
            arms[fast] = SimArm(SimArmConfig(task=task))
            arms[fast].connect()
            if not fast:
                fast_metaworld.unpatch(arms[fast]._env.unwrapped)
        spent = {True: 0.0, False: 0.0}
        for episode in range(episodes):
            for fast in (True, False) if episode % 2 == 0 else (False, True):
                arm = arms[fast]
                arm.reset_episode(episode)
                expert = arm.task.expert()
                for _ in range(steps):
                    action = expert.get_action(arm.state_vector()).tolist()
                    action = dict(zip(ACTION_NAMES, action, strict=True))
                    start = time.perf_counter()
                    arm.send_action(action)
                    spent[fast] += time.perf_counter() - start
        for arm in arms.values():
            arm.disconnect()
        name = task.removesuffix("-v3").replace("-", "_")
        out[f"{name}_ms_per_step"] = spent[True] / (episodes * steps) * 1000
        out[f"{name}_unpatched_ms_per_step"] = spent[False] / (episodes * steps) * 1000
        out[f"{name}_speedup"] = spent[False] / spent[True]
    return out


def _throughput(label: str, episodes: int, steps: int, seconds: float) -> dict[str, Any]:
    return {
        f"{label}_episodes": episodes,
        f"{label}_episodes_per_s": episodes / seconds,
        f"{label}_env_steps_per_s": steps / seconds,
    }


def soak(work: Path, quick: bool, minutes: float = 20.0) -> dict[str, Any]:
    from benchmarks.soak import soak as run_soak

    return run_soak(work, 1.0 if quick else minutes)


# The uplink as `flywheel uplink` runs it, in a process of its own (as on an arm's computer), its
# fetches and episode shipments timed and its peak RSS read around each fetch (/proc/self/status;
# writing 5 to /proc/self/clear_refs resets the peak to the RSS of the moment).
_UPLINK_SCRIPT = r"""
import json, sys, time
from flywheel.contracts.endpoints import WireConfig
from flywheel.uplink.agent import Uplink, uplink_main
from flywheel.uplink.config import UplinkConfig

args = json.loads(sys.argv[1])
events = open(args.pop("events"), "a", buffering=1)

def memory():
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found

def timed(name, method, key):
    def wrapper(self, *a, **kw):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            reset = True
        except OSError:
            reset = False
        before, start = memory(), time.monotonic()
        result = method(self, *a, **kw)
        end = time.monotonic()
        events.write(json.dumps({"event": name, "key": key(a), "start": start, "end": end,
                                 "rss_before": before["VmRSS"], "hwm_after": memory()["VmHWM"],
                                 "hwm_reset": reset}) + "\n")
        return result
    return wrapper

Uplink.fetch = timed("fetch", Uplink.fetch, lambda a: a[0])
Uplink.ship_episode = timed("ship", Uplink.ship_episode, lambda a: a[0].index)
wire = WireConfig(deploy=args.pop("deploy"))
sys.exit(uplink_main(UplinkConfig(wire=wire, **args)))
"""


def _random_safetensors(path: Path, nbytes: int, seed: int, tensor_bytes: int = 512 << 20) -> str:
    """A valid safetensors file of about `nbytes`: 1-D bf16 tensors of at most `tensor_bytes`, random
    bits with the top exponent bit cleared (every value finite, |x| < 2), written block by block;
    returns its sha256."""
    import hashlib
    import json
    import struct

    elements, per = nbytes // 2, tensor_bytes // 2
    header, offset = {}, 0
    for i in range(-(-elements // per)):
        n = min(per, elements - i * per)
        span = [offset, offset + 2 * n]
        header[f"layer{i:02d}.weight"] = {"dtype": "BF16", "shape": [n], "data_offsets": span}
        offset += 2 * n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    digest, rng = hashlib.sha256(), np.random.default_rng(seed)
    with open(path, "wb") as f:
        for block in (struct.pack("<Q", len(head)), head):
            f.write(block)
            digest.update(block)
        written = 0
        while written < offset:
            n = min(64 << 20, offset - written)
            block = np.frombuffer(rng.bytes(n), np.uint16) & np.uint16(0xBFFF)
            f.write(block)
            digest.update(block)
            written += n
    return digest.hexdigest()


def _big_version(registry: ModelRegistry, version: int, nbytes: int) -> int:
    """Registry version `version` with a random `nbytes` model.safetensors, written in place (publish
    would copy it once more); returns the bytes of the version's files."""
    import json
    from dataclasses import asdict

    from flywheel.contracts.registry import MANIFEST_FILE, WEIGHTS_FILE, Manifest

    folder = registry.path(version)
    folder.mkdir(parents=True)
    sha = _random_safetensors(folder / WEIGHTS_FILE, nbytes, seed=version)
    (folder / "config.json").write_text(json.dumps({"type": "bench", "bytes": nbytes}))
    manifest = Manifest(version, sha, kind="import", created_at=time.time())
    (folder / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
    return sum(p.stat().st_size for p in folder.iterdir())


class _CheckingDaemon:
    """The arm daemon's deploy endpoint as far as it runs on a CPU: each DEPLOY is validated with
    the daemon's own `check_weights` (sha256, names and shapes against itself, every value finite),
    timed, and answered `swapped`. Loading the weights into a policy is not done here."""

    def __init__(self, address: str):
        import zmq

        self.checks: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._socket = zmq.Context.instance().socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from flywheel.contracts.messages import DeployReply
        from flywheel.contracts.protocol import decode, encode
        from flywheel.rollout.hotswap import Deployment, check_weights

        while not self._stop.is_set():
            if not self._socket.poll(50):
                continue
            received = time.monotonic()
            request = DeployRequest.from_message(decode(self._socket.recv_multipart()))
            candidate = Deployment.of(request)
            try:
                check_weights(candidate, candidate.path)
                reply, error = DeployReply("swapped", request.version, version=request.version), ""
            except Exception as e:
                reply, error = DeployReply("rejected", None, reason=str(e)), str(e)
            self.checks[request.version] = {"received": received, "checked": time.monotonic(), "error": error}
            self._socket.send_multipart(encode(reply.to_message()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


def _events(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fleet(work: Path, quick: bool) -> dict[str, Any]:
    """Weights and episodes over the wire, on loopback: a FleetServer (trainer/fleet.py) in this
    process, the uplink (`flywheel uplink`, default chunk size and poll interval) in a process of
    its own, the arm daemon's deploy endpoint here as `_CheckingDaemon` (check_weights, no load).

    `weights_*`: deploy of a version whose model.safetensors is 1 GiB (quick: 128 MiB) of random
    finite bf16; MB/s (10^6 bytes) of the uplink's fetch (every chunk requested, written into its
    cache, sha256-checked, the folder renamed into place), and the uplink process's peak RSS over
    the fetch minus its RSS before it. `pi05_*` (full run only): the same with a file the size of
    the pi05 preset in bf16 (parameter count x 2 bytes), from `deploy()` on the trainer to the
    candidate validated by the daemon's check_weights. `episode_*`: episodes of 200 sim-shaped
    frames saved into a flywheel dataset here (open_for_append/save_episode, as the recorder does)
    at random phases of the uplink's poll; per episode, the time from its save completing to the
    FleetServer's on_episode callback."""
    import json
    import shutil

    from flywheel.contracts.dataset import (
        DataType,
        EpisodeInfo,
        dataset_features,
        open_for_append,
        save_episode,
    )
    from flywheel.policies.pi_star_recap.build_checks import parameter_count
    from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig
    from flywheel.uplink.config import UplinkConfig
    from robots.sim import ACTION_NAMES
    from trainer.fleet import FleetConfig, FleetServer

    arm, defaults = "bench-arm", UplinkConfig(arm="bench-arm")
    registry = ModelRegistry(work / "models")
    arrived: dict[int, float] = {}
    server = FleetServer(
        FleetConfig(bind=free_loopback(), inbox=work / "inbox"),
        registry.root,
        on_episode=lambda a, i: arrived.setdefault(i, time.monotonic()),
    ).start()
    deploy_address = free_loopback()
    daemon = _CheckingDaemon(deploy_address)
    events, log = work / "uplink-events.jsonl", work / "uplink.log"
    args = {
        "events": str(events),
        "deploy": deploy_address,
        "trainer": server.cfg.bind,
        "arm": arm,
        "dataset_root": str(work / "arm-dataset"),
        "cache": str(work / "arm-cache"),
        "deploy_timeout_s": 600.0,  # the daemon's check of a pi05-size file takes more than the 60 s default
    }
    with open(log, "w") as stderr:
        uplink = subprocess.Popen([sys.executable, "-c", _UPLINK_SCRIPT, json.dumps(args)], stderr=stderr)
    out: dict[str, Any] = {
        "chunk_bytes": defaults.chunk_bytes,
        "poll_s": defaults.poll_s,
    }
    try:
        _wait(lambda: arm in server._arms or uplink.poll() is not None, timeout=120)
        if uplink.poll() is not None:
            raise RuntimeError(f"benchmark: the uplink exited: {log.read_text()[-2000:]}")

        def deploy(version: int, prefix: str) -> None:
            start = time.monotonic()
            report = server.deploy(version, timeout_s=1800)[arm]
            done = time.monotonic()
            check = daemon.checks.get(version)
            fetch = next((e for e in _events(events) if e["event"] == "fetch" and e["key"] == version), None)
            if report.status != "swapped" or check is None or check["error"] or fetch is None:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"benchmark: deploy v{version}: {report}, {check}, {tail}")
            size = sum(p.stat().st_size for p in registry.path(version).iterdir())
            out[f"{prefix}_bytes"] = size
            out[f"{prefix}_until_fetch_s"] = fetch["start"] - start
            out[f"{prefix}_fetch_s"] = fetch["end"] - fetch["start"]
            out[f"{prefix}_mb_per_s"] = size / 1e6 / (fetch["end"] - fetch["start"])
            out[f"{prefix}_uplink_rss_before_mb"] = fetch["rss_before"] / 1e6
            out[f"{prefix}_uplink_peak_rss_growth_mb"] = (fetch["hwm_after"] - fetch["rss_before"]) / 1e6
            out[f"{prefix}_check_weights_s"] = check["checked"] - check["received"]
            out[f"{prefix}_deploy_to_validated_s"] = check["checked"] - start
            out[f"{prefix}_deploy_call_s"] = done - start
            out["uplink_peak_rss_reset"] = fetch["hwm_reset"]

        _big_version(registry, 1, (128 << 20) if quick else (1 << 30))
        deploy(1, "weights")
        pi05_bytes = parameter_count(PiStarRECAPConfig(preset="pi05")) * 2
        out["pi05_weights_bytes"] = pi05_bytes
        if not quick:  # 6.7 GB written, copied and checked: the full run only
            _big_version(registry, 2, pi05_bytes)
            deploy(2, "pi05")
            shutil.rmtree(registry.path(2))  # the case's own files, 2 x 6.7 GB
            shutil.rmtree(work / "arm-cache" / "v0002", ignore_errors=True)

        episodes = 3 if quick else 10
        features = dataset_features({n: float for n in STATE_NAMES}, {n: float for n in ACTION_NAMES}, False)
        dataset = open_for_append(work / "arm-dataset", "bench/fleet", FPS, features, "sim", False)
        rng = np.random.default_rng(0)
        saved: dict[int, float] = {}
        for index in range(episodes):
            time.sleep(float(rng.uniform(0, defaults.poll_s)))  # a random phase of the poll
            for k in range(200):
                dataset.add_frame({
                    "observation.state": rng.standard_normal(len(STATE_NAMES)).astype(np.float32),
                    "action": rng.standard_normal(len(ACTION_NAMES)).astype(np.float32),
                    "intervention": np.array([False]), "policy_version": np.array([1]),
                    "next.reward": np.zeros(1, np.float32), "next.done": np.array([k == 199]),
                    "task": "push the puck to the goal",
                })  # fmt: skip
            save_episode(dataset, EpisodeInfo(DataType.AUTO, success=True))
            saved[index] = time.monotonic()
            _wait(lambda index=index: index in arrived, timeout=60)
        delays = [(arrived[i] - saved[i]) * 1000 for i in range(episodes)]
        ships = {e["key"]: (e["end"] - e["start"]) * 1000 for e in _events(events) if e["event"] == "ship"}
        out["episodes"] = episodes
        out["episode_delay_p50_ms"] = float(np.percentile(delays, 50))
        out["episode_delay_max_ms"] = float(max(delays))
        out["episode_ship_p50_ms"] = float(np.percentile([ships[i] for i in range(episodes)], 50))
        data = sum(p.stat().st_size for p in (work / "inbox" / arm / "data").rglob("*.parquet"))
        out["episode_data_bytes_mean"] = data / episodes
    finally:
        uplink.terminate()
        try:
            uplink.wait(timeout=30)
        except subprocess.TimeoutExpired:
            uplink.kill()
        daemon.close()
        server.stop()
    return out


class _SlowPolicy:
    """A chunk policy whose every chunk takes at least `latency_s` (it sleeps what inference left):
    an artificial inference delay."""

    def __init__(self, inner, latency_s: float):
        self.inner, self.latency_s = inner, latency_s
        self.delays: list[int] = []  # the RTC delay of each request with a prefix

    @property
    def version(self) -> int:
        return self.inner.version

    def predict_chunk(self, observation, task, prefix=None):
        start = time.perf_counter()
        if prefix is None:
            chunk = self.inner.predict_chunk(observation, task)
        else:
            self.delays.append(prefix.delay)
            chunk = self.inner.predict_chunk(observation, task, prefix)
        time.sleep(max(0.0, self.latency_s - (time.perf_counter() - start)))
        return chunk

    def reset(self) -> None:
        self.inner.reset()


def _smooth_sim_policy(work: Path, episodes: int, steps: int) -> Path:
    """A tiny pi_star_recap (chunk 50) trained a little on the sim, to output smooth actions: sim
    episodes of MetaWorld's scripted expert without the operator's noise, recorded in lockstep; the
    expert's own actions jump by up to 2 per tick (its saturated gains), so the training targets are
    those actions low-pass filtered (a Gaussian of sigma 5 ticks along each episode). Trained here
    (AdamW, lr 1e-3, batch 32) on the recorded states, saved with tiny_sim_checkpoint's identity
    normalization."""
    import pandas as pd

    from flywheel.policies.pi_star_recap import PiStarRECAPPolicy

    chunk = 50
    cfg = RolloutConfig(
        robot=SimArmConfig(task="push-v3"),
        teleop=SimOperatorConfig(skill="good", noise_std=0.0),
        pedal=SimPedalConfig(),
        local_teleop=True,
        policy=PolicySourceConfig(baseline="random"),
        dataset=DatasetConfig(root=work / "rtc-data"),
        wire=WireConfig.in_process("bench-rtc-data"),
        episodes=episodes,
        fps=0,
        episode_time_s=5.0,
        report_cadence=False,
    )
    RolloutDaemon(cfg).run()
    frames = pd.concat([pd.read_parquet(p) for p in sorted((work / "rtc-data" / "data").rglob("*.parquet"))])
    states = np.stack(frames["observation.state"].to_numpy()).astype(np.float32)
    actions = np.stack(frames["action"].to_numpy()).astype(np.float32)
    episode = frames["episode_index"].to_numpy()
    kernel = np.exp(-0.5 * (np.arange(-15, 16) / 5.0) ** 2)
    kernel /= kernel.sum()
    for e in np.unique(episode):
        part = np.pad(actions[episode == e], ((15, 15), (0, 0)), mode="edge")
        actions[episode == e] = np.stack([np.convolve(col, kernel, "valid") for col in part.T], axis=1)
    last = np.array([np.flatnonzero(episode == e).max() for e in episode])
    rows = np.arange(len(states))[:, None] + np.arange(chunk)[None]
    pad = rows > last[:, None]
    rows = np.minimum(rows, last[:, None])

    path = tiny_sim_checkpoint(work / "rtc-policy", chunk_size=chunk)
    policy = PiStarRECAPPolicy.from_pretrained(path)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    policy.train()
    for _ in range(steps):
        b = rng.integers(0, len(states), 32)
        batch = {
            "observation.state": torch.from_numpy(states[b]),
            "action": torch.from_numpy(actions[rows[b]]),
            "action_is_pad": torch.from_numpy(pad[b]),
            "task": ["push the puck to the goal"] * 32,
        }
        loss, _ = policy(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    policy.save_pretrained(path)
    return path


def _smoothness(log: list[tuple[int, np.ndarray, int, bool]], prefix: str) -> dict[str, float]:
    """log: per tick (episode, commanded action, chunks started so far, held). Jumps
    |a_t - a_(t-1)| and jerk |a_t - 3 a_(t-1) + 3 a_(t-2) - a_(t-3)| per action dimension, from
    each episode's first policy action on; 'boundary': at the ticks where a new chunk's first
    action is sent (the episode's first chunk left out). A figure is the worst dimension's."""
    jumps, jerks, b_jumps, b_jerks = [], [], [], []
    for episode in sorted({e for e, *_ in log}):
        rows = [r for r in log if r[0] == episode]
        rows = rows[next((i for i, r in enumerate(rows) if not r[3]), len(rows)) :]
        if len(rows) < 4:
            continue
        a = np.stack([r[1] for r in rows])
        chunk = np.array([r[2] for r in rows])
        jump = np.abs(np.diff(a, axis=0))  # jump[i]: between ticks i and i + 1
        jerk = np.abs(np.diff(a, n=3, axis=0))  # jerk[i]: ends at tick i + 3
        starts = np.flatnonzero(np.diff(chunk) > 0) + 1  # ticks where a new chunk's first action went
        jumps.append(jump)
        jerks.append(jerk)
        b_jumps.append(jump[starts - 1])
        # The jerk windows that contain the boundary jump.
        b_jerks.append(jerk[[i for s in starts for i in range(s - 3, s) if 0 <= i < len(jerk)]])
    out: dict[str, float] = {}
    for name, parts in (
        ("jump", jumps),
        ("jerk", jerks),
        ("boundary_jump", b_jumps),
        ("boundary_jerk", b_jerks),
    ):
        v = np.concatenate(parts)
        out[f"{prefix}_{name}_max"] = float(v.max(axis=0).max()) if len(v) else float("nan")
        out[f"{prefix}_{name}_p99"] = float(np.percentile(v, 99, axis=0).max()) if len(v) else float("nan")
    out[f"{prefix}_boundaries"] = int(sum(len(b) for b in b_jumps))
    return out


def rtc_smoothness(work: Path, quick: bool, train_steps: int | None = None) -> dict[str, Any]:
    """Smoothness of the commanded actions at chunk boundaries with and without real-time chunking:
    the daemon at 30 Hz on the sim, a tiny pi_star_recap (chunk 50) trained a little on smooth sim
    demonstrations, each chunk made to take 0, 1/6 or 1/3 of the chunk's duration (a wrapper that
    sleeps; '0': inference alone, about a tick), refill_at 25 for all.

    Then the same policy served (`_served_smoothness`): `flywheel serve` in a subprocess, the daemon's
    remote policy (`--policy.server`) with rtc off and on: `served_*` on loopback (the delay is the
    server's inference and the round trip), `served_netns<ms>_*` with the daemon in a network
    namespace and `ms` added each way to its link to the server's namespace (left out, with the reason
    in `served_netns`, where namespaces cannot be made)."""
    episodes, steps, frames = (4, 400, 150) if quick else (8, 2000, 300)
    steps = train_steps or steps
    start = time.perf_counter()
    policy_path = _smooth_sim_policy(work, episodes, steps)
    chunk, refill_at = 50, 25
    out: dict[str, Any] = {"train_steps": steps, "episodes_per_run": 3 if quick else 4}
    out["train_s"] = time.perf_counter() - start
    for fraction, label in ((0.0, "d0"), (1 / 6, "d1_6"), (1 / 3, "d1_3")):
        for rtc in (False, True):
            cfg = RolloutConfig(
                robot=SimArmConfig(task="push-v3"),
                policy=PolicySourceConfig(path=policy_path, refill_at=refill_at, rtc=rtc),
                dataset=DatasetConfig(root=work / f"rtc-{label}-{rtc}", repo_id="bench/rtc", record=False),
                wire=WireConfig.in_process(f"bench-rtc-{label}-{rtc}"),
                episodes=out["episodes_per_run"],
                fps=FPS,
                episode_time_s=frames / FPS,
                report_cadence=False,
            )
            name = f"{label}_{'rtc' if rtc else 'plain'}"
            out |= _smoothness_run(cfg, name, fraction * chunk / FPS)
    start = time.perf_counter()
    out |= _served_smoothness(work, policy_path, quick)
    out["served_s"] = time.perf_counter() - start
    return out


def _smoothness_run(cfg: RolloutConfig, name: str, latency_s: float = 0.0, policy=None) -> dict[str, Any]:
    """One daemon run of `cfg` (30 Hz, the pedal never pressed: the policy acts every tick), every
    action sent to the sim logged: `_smoothness` figures named `name`, `<name>_held_ticks` and, with
    rtc, `<name>_delay_ticks_mean` (the delay each prefixed request carried). Each chunk takes at
    least `latency_s` (`_SlowPolicy`; 0: as it comes). `policy`: the daemon's ChunkPolicy (default:
    the one `cfg.policy` makes)."""
    from robots.sim import ACTION_NAMES

    pedal = ConstantPedal(ConstantPedalConfig(pressed=False))
    daemon = RolloutDaemon(cfg, policy=policy, link=LocalTeleop(SimOperator(SimOperatorConfig()), pedal))
    slow = _SlowPolicy(daemon.policy, latency_s)
    daemon.policy = slow
    log: list[tuple[int, np.ndarray, int, bool]] = []
    episode_of: dict[str, int] = {"misses": 0}
    tick, send = daemon._tick, daemon.robot.send_action

    def timed_tick(episode, frame, task, state):
        episode_of["now"] = episode
        return tick(episode, frame, task, state)

    def sent(action):
        vec = np.array([float(action[n]) for n in ACTION_NAMES])
        runner = daemon.runner
        held = runner.misses > episode_of["misses"]
        episode_of["misses"] = runner.misses
        log.append((episode_of.get("now", -1), vec, runner.chunks_started, held))
        return send(action)

    daemon._tick, daemon.robot.send_action = timed_tick, sent
    daemon.run()
    out = _smoothness([r for r in log if r[0] >= 0], name)
    out[f"{name}_held_ticks"] = daemon.runner.misses
    if cfg.policy.rtc:
        out[f"{name}_delay_ticks_mean"] = float(np.mean(slow.delays)) if slow.delays else 0.0
    return out


SERVED_NETNS_MS = 100  # added each way between the daemon's namespace and the server's


def _served_smoothness(work: Path, policy_path: Path, quick: bool) -> dict[str, Any]:
    """rtc_smoothness's policy on `flywheel serve` (a subprocess, one torch thread), the daemon's
    remote policy with rtc off and on: on loopback, then across namespaces with SERVED_NETNS_MS
    added each way (the daemon in namespace "arm", a script of its own; CurveZMQ, as the server
    binds off loopback). Figures `served_{plain,rtc}_*` and `served_netns<ms>_{plain,rtc}_*`, each
    run's also `_rtt_p50_ms` (the remote policy's round trips)."""
    from benchmarks.remote import ServeProcess, free_loopback, serve_argv

    args = {"episodes": 3 if quick else 2, "frames": 150 if quick else 300, "root": str(work / "served")}
    out: dict[str, Any] = {"served_episodes_per_run": args["episodes"], "served_frames": args["frames"]}
    address = free_loopback()
    server = ServeProcess(serve_argv(policy_path, address, free_loopback()), work / "serve-rtc.log")
    try:
        server.wait_ready()
        out |= _served_runs({**args, "address": address, "setting": "served"})
    finally:
        server.stop()
    return out | _served_across_namespaces(work, policy_path, args)


def _served_runs(args: dict[str, Any]) -> dict[str, Any]:
    """The daemon on the server at args["address"] (with args["keys"]: CurveZMQ), rtc off then on.
    Its remote policy is the one the daemon makes for --policy.server (and --wire.keys_dir), sent a
    few untimed requests first, so that the server's first (slow) inference is not the first latency
    in the runner's window, whose p95 is the RTC delay of the next 20 chunks. (The connection's own
    handshakes, about 1 s at 100 ms each way, the daemon now does when it starts.)"""
    from flywheel.contracts.security import Security
    from flywheel.rollout.remote_policy import RemoteChunkPolicy
    from robots.sim import ACTION_NAMES

    security = Security(Path(args["keys"]), "daemon") if args.get("keys") else None
    observation = dict.fromkeys(STATE_NAMES, 0.0)
    out: dict[str, Any] = {}
    for rtc in (False, True):
        name = f"{args['setting']}_{'rtc' if rtc else 'plain'}"
        cfg = RolloutConfig(
            robot=SimArmConfig(task="push-v3"),
            policy=PolicySourceConfig(server=args["address"], refill_at=25, rtc=rtc),
            dataset=DatasetConfig(root=Path(args["root"]) / name, repo_id="bench/rtc", record=False),
            wire=WireConfig.in_process(f"bench-{name}"),
            episodes=args["episodes"],
            fps=FPS,
            episode_time_s=args["frames"] / FPS,
            report_cadence=False,
        )
        remote = RemoteChunkPolicy(args["address"], list(ACTION_NAMES), fps=FPS, security=security)
        try:
            for _ in range(3):
                remote.predict_chunk(observation, "push the puck to the goal")
            out |= _smoothness_run(cfg, name, policy=remote)
            out[f"{name}_rtt_p50_ms"] = remote.rtt_stats().get("p50_ms")
        finally:
            remote.close()
    return out


# `_served_runs` inside the daemon's namespace: its figures as one JSON line (benchmarks.remote's mark).
_SERVED_ARM_SCRIPT = """\
import json, sys
sys.path.insert(0, sys.argv[1])
from benchmarks.cases import _served_runs
from benchmarks.remote import RESULT_MARK
print(RESULT_MARK + json.dumps(_served_runs(json.loads(sys.argv[2]))), flush=True)
"""


def _served_across_namespaces(work: Path, policy_path: Path, args: dict[str, Any]) -> dict[str, Any]:
    import json

    from benchmarks.netns import DelayUnavailable, NetnsError, NetnsUnavailable, Topology
    from benchmarks.remote import REPO, ServeProcess, run_in_host

    try:
        net = Topology(["arm"], hub="gpu")
    except (NetnsUnavailable, NetnsError) as e:
        return {"served_netns": f"unavailable: {e}"}
    server = None
    try:
        try:
            mechanism = net.delay("arm", SERVED_NETNS_MS)
        except DelayUnavailable as e:
            return {"served_netns": f"delay unavailable: {e}"}
        keys = work / "served-keys"
        server = ServeProcess.in_namespace(net, policy_path, keys, work / "serve-rtc-netns.log")
        server.wait_ready()
        address = server.address
        script = work / "served_arm.py"
        script.write_text(_SERVED_ARM_SCRIPT)
        setting = f"served_netns{SERVED_NETNS_MS}"
        run_args = {**args, "address": address, "keys": str(keys), "setting": setting}
        budget = 120 + 2 * (30 + 2 * args["episodes"] * args["frames"] / FPS)
        argv = [sys.executable, str(script), str(REPO), json.dumps(run_args)]
        return {"served_netns": f"veth, CurveZMQ, {mechanism}"} | run_in_host(net, "arm", argv, budget)
    finally:
        if server is not None:
            server.stop()
        net.close()


CASES = {
    "control_loop": control_loop,
    "hot_swap": hot_swap,
    "select_action": select_action,
    "training": training,
    "recording": recording,
    "lerobot_record_loop": lerobot_record_loop,
    "labeling": labeling,
    "evaluation": evaluation,
    "sim_step": sim_step,
    "fleet": fleet,
    "soak": soak,  # long: not in the default list (benchmarks/run.py)
    "rtc_smoothness": rtc_smoothness,
    "remote_policy": remote_policy,
    "handover": handover,
}


def run_case(name: str, quick: bool, soak_minutes: float = 20.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as work:
        start = time.perf_counter()
        extra = {"minutes": soak_minutes} if name == "soak" else {}
        figures = CASES[name](Path(work), quick, **extra)
        figures["case_wall_s"] = time.perf_counter() - start
        return figures
