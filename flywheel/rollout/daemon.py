"""The rollout daemon's control loop.

Each tick: apply a pending takeover request, read the robot, publish what it sees, pick the action
(the policy's queue, or the operator's when the pedal is down), send it, hand the tick to the sinks
(the live view, then the recorder). Inference, recording and the teleop stream all live on other
threads.

Its seams (docs/architecture.md, "The daemon's seams"): the sinks (`flywheel.contracts.ticks`), the
robot (`EpisodicRobot` for what only the sim can do), the teleop link (`TeleopLink`), and the public
hooks for programs that embed it (`deploy`, `wait_until_running`, `load_policy`, `await_deploy_s`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from lerobot.robots.robot import Robot
from lerobot.robots.utils import make_robot_from_config
from lerobot.teleoperators.utils import make_teleoperator_from_config

from flywheel.contracts.dataset import DataType, EpisodeInfo, dataset_features, open_for_append
from flywheel.contracts.messages import DeployReply, DeployRequest, Observation, send_deploy
from flywheel.contracts.protocol import Publisher
from flywheel.contracts.registry import WEIGHTS_FILE, sha256_file
from flywheel.contracts.ticks import EpisodeEnd, Tick, TickSink
from flywheel.rollout.cadence import CadenceReport, RateKeeper
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.episodic import EpisodicRobot, MotorBusRobot
from flywheel.rollout.hotswap import CandidateRejected, Deployment, HotSwap
from flywheel.rollout.policy_runner import PolicyRunner
from flywheel.rollout.policy_source import ChunkPolicy, LeRobotChunkPolicy, hold_action, make_chunk_policy
from flywheel.rollout.recorder import NullRecorder, Recorder, SavedEpisode
from flywheel.rollout.remote_policy import RemoteChunkPolicy
from flywheel.rollout.safety import SafetyLayer
from flywheel.rollout.sinks import EventSink
from flywheel.rollout.takeover import ControlState, TakeoverMachine
from flywheel.rollout.teleop_link import LocalTeleop, RemoteTeleop, TeleopLink, TeleopSnapshot
from teleop.pedals import make_pedal

log = logging.getLogger(__name__)


@dataclass
class EpisodeResult:
    index: int  # episode number in this run (not the dataset's episode index)
    frames: int
    success: bool
    data_type: DataType | None  # None: discarded (re-record) or stopped
    intervention_frames: int
    end_reason: str
    cadence: CadenceReport
    policy_misses: int = 0
    takeovers: int = 0
    saved: bool | None = None  # known once the recorder has written it; None for discarded attempts


@dataclass
class _EpisodeState:
    frames: int = 0
    intervention_frames: int = 0
    takeovers: int = 0
    versions: set[int] = field(default_factory=set)
    keys_at_start: dict[str, int] | None = None


class RolloutDaemon:
    def __init__(
        self,
        cfg: RolloutConfig,
        robot: Robot | None = None,
        policy: ChunkPolicy | None = None,
        link: TeleopLink | None = None,
        load_policy: Callable[[Deployment], ChunkPolicy] | None = None,
        await_deploy_s: float = 0.0,
    ):
        """Everything is built from `cfg`; `robot`, `policy` and `link` replace the built ones
        (tests, and programs that embed the daemon). `load_policy` replaces `load_deployment`, the
        hot-swap thread's loader of a deployed version. With `await_deploy_s`, the first episode
        waits up to that long for a deploy sent meanwhile (`deploy`) to be validated or refused, so
        that every recorded frame is acted on by the new version (it swaps in at frame 0).

        Nothing is opened here (no socket, no thread, no dataset): `run` does that."""
        if cfg.robot is None and robot is None:
            raise ValueError("robot: no robot given; use --robot sim, --robot so100 or --robot.type=...")
        self.cfg = cfg
        self.robot = robot or make_robot_from_config(cfg.robot)
        # What only the sim can do (set up its own scenes, say success), asked once.
        self.episodic: EpisodicRobot | None = self.robot if isinstance(self.robot, EpisodicRobot) else None
        self.action_names = list(self.robot.action_features)
        self.features = dataset_features(
            self.robot.observation_features, self.robot.action_features, cfg.dataset.video
        )
        self.policy = policy or make_chunk_policy(
            cfg.policy, self.features, self.action_names, fps=cfg.fps, security=cfg.wire.security("daemon")
        )
        self._link = link
        self._load_policy = load_policy
        self.await_deploy_s = await_deploy_s
        self.lockstep = cfg.fps == 0
        self.machine = TakeoverMachine()
        self.safety = SafetyLayer(cfg.safety, self.action_names, list(self.robot.observation_features))
        self.rate = RateKeeper(cfg.fps)
        self.results: list[EpisodeResult] = []
        self._ctx = zmq.Context.instance()
        self._scalar_names = [k for k, v in self.robot.observation_features.items() if v is float]
        self._stop_requested = False
        self._fault_counts: dict[str, int] = {}
        self._last_observation: dict[str, Any] | None = None
        self._running = threading.Event()  # set once the robot is connected and first read
        self._task = ""
        self.viz = None  # the RerunLogger, when cfg.rerun.enabled (built by run)
        self.sinks: list[TickSink] = []  # built by run: [events, viz?, recorder]

    # --- hooks for programs that embed the daemon -------------------------------------------------
    @property
    def context(self) -> zmq.Context:
        """The ZeroMQ context the daemon's sockets live in (inproc:// addresses need the same one)."""
        return self._ctx

    def deploy(self, request: DeployRequest, timeout_s: float = 60.0) -> DeployReply:
        """Send a DEPLOY (or rollback) request to this daemon's own endpoint, as the trainer does,
        from any thread but the daemon's; the reply comes once the version swapped in, was queued
        or was refused. No CurveZMQ keys: for in-process callers (the demo, benchmarks, tests)."""
        return send_deploy(self._ctx, self.cfg.wire.deploy, request, timeout_s)

    def wait_until_running(self, timeout_s: float | None = None) -> bool:
        """Wait until `run` connected the robot and read it once (a deploy's smoke test then has an
        observation to run on). False if `timeout_s` passed first."""
        return self._running.wait(timeout_s)

    # --- lifecycle ---------------------------------------------------------------------------------
    def run(self) -> list[EpisodeResult]:
        cfg = self.cfg
        # A thread that wants the GIL waits up to the switch interval (5 ms by default) while the
        # policy worker or the recorder runs Python: 1 ms keeps the tick on time.
        sys.setswitchinterval(0.001)
        self.events = Publisher(self._ctx, cfg.wire.daemon_events, cfg.wire.security("daemon"))
        announcer = EventSink(self.events, Path(cfg.dataset.root))
        self.recorder = self._make_recorder(on_saved=announcer.episode_saved)
        self.viz = self._make_viz()
        # The order of every tick's side effects: the live view, then the recorder (ends in reverse).
        self.sinks = [announcer, *([self.viz] if self.viz is not None else []), self.recorder]
        self.runner = PolicyRunner(
            self.policy,
            cfg.policy.refill_at,
            blocking=self.lockstep,
            max_wait_s=0.5 / cfg.fps if cfg.fps else 0.0,
            rtc=cfg.policy.rtc,  # real time only: the runner ignores it in lockstep
            period_s=1.0 / cfg.fps if cfg.fps else 0.0,
        )
        self.link = self._link or self._make_teleop_link()
        self.hotswap = HotSwap(
            self._ctx,
            cfg.wire.deploy,
            self._load_policy or self.load_deployment,
            self._newest_observation,
            len(self.action_names),
            self._initial_deployment(),
            security=cfg.wire.security("daemon"),
        )
        try:
            if isinstance(self.policy, RemoteChunkPolicy):
                self.policy.connect()  # the handshakes run while the robot connects
            self.robot.connect()
            self._last_observation = self.robot.get_observation()
            self._running.set()
            self.hotswap.start()
            self.link.start()
            if self.await_deploy_s > 0:
                self._await_deploy()
            self._wait_for_subscribers()
            self._wait_for_policy_server()
            saved, attempt = 0, 0
            while not self._stop_requested and (cfg.episodes == 0 or saved < cfg.episodes):
                # Every attempt gets its own number (a re-recorded one too), so nothing from a
                # discarded attempt, like a late teleop answer, is mistaken for this one's.
                result = self.run_episode(attempt)
                self.results.append(result)
                attempt += 1
                saved += result.data_type is not None
                if self.machine.state == ControlState.STOPPED:
                    log.error("emergency stop: the daemon stops")
                    break
                if cfg.reset_time_s > 0 and self.episodic is None:
                    log.info("reset the scene: %.0f s", cfg.reset_time_s)
                    time.sleep(cfg.reset_time_s)
        finally:
            self._shutdown()
        kept = [r for r in self.results if r.data_type is not None]
        for result, saved in zip(kept, self.recorder.outcomes, strict=False):
            result.saved = saved
        lost = [r.index for r in kept if not r.saved]
        if lost and self.cfg.dataset.record:
            log.error("episodes %s were not saved: %r", lost, self.recorder.error)
        return self.results

    def stop(self) -> None:
        """Ask the loop to end after the current tick (from a signal handler or another thread)."""
        self._stop_requested = True

    def _make_teleop_link(self) -> TeleopLink:
        cfg = self.cfg
        if cfg.local_teleop:
            if cfg.teleop is None or cfg.pedal is None:
                raise ValueError("local_teleop: true needs --teleop.type and --pedal.type")
            return LocalTeleop(make_teleoperator_from_config(cfg.teleop), make_pedal(cfg.pedal))
        return RemoteTeleop(
            self._ctx, cfg.wire.teleop_state, cfg.lockstep_timeout_ms / 1000, cfg.wire.security("daemon")
        )

    def _wait_for_subscribers(self) -> None:
        """Start the first episode only once the teleop process is heard: before that, nobody
        could take over. (PUB/SUB also drops what is sent before a connection completes.)"""
        if not self.link.remote:
            return
        deadline = time.monotonic() + self.cfg.teleop_wait_s
        log.info("waiting for the teleop process on %s", self.cfg.wire.teleop_state)
        while not self.link.heard() and time.monotonic() < deadline and not self._stop_requested:
            time.sleep(0.05)
        if not self.link.heard():
            log.warning(
                "no teleop process heard after %.0f s: starting without takeovers", self.cfg.teleop_wait_s
            )
        time.sleep(0.3)  # the teleop process's own subscription to our observations

    def _wait_for_policy_server(self) -> None:
        """A remote policy: the first episode starts once its connection is up (bounded), so that its
        first chunk, and RTC's latency estimate, do not carry the connection's handshakes."""
        remote = self.policy if isinstance(self.policy, RemoteChunkPolicy) else None
        if remote is not None and not remote.connect(wait_s=remote.first_timeout_s):
            log.warning(
                "policy server %s: no connection after %.0f s; starting (the arm holds until it answers)",
                remote.address,
                remote.first_timeout_s,
            )

    def _await_deploy(self) -> None:
        """Before the first episode: wait until a deployed version is validated and waiting in the
        standby slot (or a deploy was refused), up to `await_deploy_s`."""
        deadline = time.monotonic() + self.await_deploy_s
        while not self.hotswap.has_standby and self.hotswap.rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.01)

    def _make_recorder(self, on_saved: Callable[[SavedEpisode], None]) -> Recorder | NullRecorder:
        cfg = self.cfg
        if not cfg.dataset.record:
            return NullRecorder()
        dataset = open_for_append(
            cfg.dataset.root,
            cfg.dataset.repo_id,
            cfg.fps or 30,
            self.features,
            self.robot.name,
            cfg.dataset.video,
        )
        return Recorder(dataset, on_saved=on_saved)

    def _make_viz(self):
        if not self.cfg.rerun.enabled:
            return None
        from flywheel.viz.logger import RerunLogger  # rerun is imported only when asked for

        return RerunLogger.from_config(self.cfg.rerun, self.robot.observation_features, self.action_names)

    def _initial_deployment(self) -> Deployment | None:
        path = self.cfg.policy.path
        if path is None or not (Path(path) / WEIGHTS_FILE).exists():
            return None
        return Deployment(self.policy.version, Path(path), sha256_file(Path(path) / WEIGHTS_FILE))

    def load_deployment(self, deployment: Deployment) -> ChunkPolicy:
        """The default `load_policy`. Runs on the hot-swap thread: builds the standby policy."""
        if self.cfg.policy.server is not None:  # refused, with the reason, by the hot-swap's reply
            raise CandidateRejected(
                f"policy.server: this daemon's policy runs on {self.cfg.policy.server}; "
                "deploy to that server's deploy address instead"
            )
        return LeRobotChunkPolicy(
            deployment.path, self.features, self.action_names, deployment.version, self.cfg.policy.device
        )

    def _newest_observation(self) -> tuple[dict[str, Any] | None, str]:
        return self._last_observation, self._task

    def _adopt_standby_policy(self, frame: int) -> None:
        """Between two ticks: the validated standby policy, if any, acts from now on."""
        standby = self.hotswap.take()
        if standby is None:
            return
        policy, deployment = standby
        self.policy = policy
        self.runner.swap(policy)
        log.info("policy v%04d acts from frame %d", deployment.version, frame)
        for sink in self.sinks:
            sink.policy_swapped(deployment.version, frame)

    def _shutdown(self) -> None:
        closers = [self.runner.close, self.link.stop, self.hotswap.stop]
        closers += [sink.close for sink in reversed(self.sinks)]  # the recorder, the view, the events
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("error during shutdown")
        if self.robot.is_connected:
            self.robot.disconnect()
        self.events.close()

    # --- one episode -------------------------------------------------------------------------------
    def run_episode(self, episode: int) -> EpisodeResult:
        cfg = self.cfg
        if self.episodic is not None:
            self.episodic.reset_episode(self.episodic.base_seed + episode)
        task = (
            cfg.task
            or (self.episodic.task_description() if self.episodic is not None else "")
            or "do the task"
        )
        self._task = task
        self.machine.reset()
        self.runner.restart()
        self.rate.reset()
        state = _EpisodeState()
        end_reason = "timeout"
        for sink in self.sinks:
            sink.start_episode(episode, task)
        misses_before = self.runner.misses
        for frame in range(cfg.max_episode_steps):
            self.rate.wait_for_tick()
            end_reason = self._tick(episode, frame, task, state)
            self.rate.end_tick()
            if end_reason or self._stop_requested:
                break
        end_reason = end_reason or ("stopped" if self._stop_requested else "timeout")
        return self._finish_episode(episode, state, end_reason, misses_before)

    def _tick(self, episode: int, frame: int, task: str, state: _EpisodeState) -> str:
        """One control period. Returns why the episode ends after this tick, or ''."""
        self._adopt_standby_policy(frame)
        observation = self.robot.get_observation()
        self._last_observation = observation
        if frame == 0:
            self.safety.reset(observation)
        view = self._publish_observation(observation, episode, frame, task)
        snapshot = self.link.poll(view, wait=self.lockstep)
        if state.keys_at_start is None:
            state.keys_at_start = dict(snapshot.keys)
        self.machine.request(ControlState.INTERVENING if snapshot.pressed else ControlState.AUTONOMOUS)
        if self._pressed(snapshot, state, "estop"):
            self.machine.request(ControlState.STOPPED)
        change = self.machine.apply()
        if change is not None:
            self._on_transition(change, state, observation)
        if self.machine.state == ControlState.STOPPED:
            return "estop"

        intervening = self.machine.state == ControlState.INTERVENING
        hold = hold_action(observation, self.action_names)
        action, version, source = self._choose_action(observation, task, frame, snapshot, intervening, hold)
        action = self.safety.apply(action, hold)
        sent = self.robot.send_action(dict(zip(self.action_names, action.tolist(), strict=True)))
        sent_vec = np.array([sent[name] for name in self.action_names], dtype=np.float32)
        # An intervention frame is one the operator's command drove: frames held because the operator's
        # stream went stale (a dead teleop process, pedal last seen down) are not corrections, and
        # labeling would otherwise force them positive. The live view shows the same flag as the dataset.
        operated = source == "operator"
        tick = Tick(episode, frame, task, observation, sent_vec, source, operated, version, snapshot.pressed)
        for sink in self.sinks:
            sink.tick(tick)
        state.frames += 1
        state.intervention_frames += operated
        state.versions.add(version)

        if self.episodic is not None and self.episodic.task_success():
            return "success"
        for key in ("success", "failure", "rerecord"):
            if self._pressed(snapshot, state, key):
                return f"operator_{key}"
        return ""

    def _choose_action(
        self,
        observation: dict[str, Any],
        task: str,
        frame: int,
        snapshot: TeleopSnapshot,
        intervening: bool,
        hold: np.ndarray,
    ) -> tuple[np.ndarray, int, str]:
        """The action for this tick, the policy version it came from (0: operator or hold), and who
        gave it (policy | operator | hold)."""
        if intervening:
            fresh = snapshot.action is not None and snapshot.age_s * 1000 <= self.cfg.teleop_timeout_ms
            if not fresh:
                return hold, 0, "hold"  # the operator's stream is stale: hold, never replay an old command
            operator = [snapshot.action.get(name, h) for name, h in zip(self.action_names, hold, strict=True)]
            return np.array(operator, dtype=np.float32), 0, "operator"
        queued = self.runner.next_action(observation, task, frame)
        return (hold, 0, "hold") if queued is None else (*queued, "policy")

    def _on_transition(
        self, change: tuple[ControlState, ControlState], state: _EpisodeState, observation: dict[str, Any]
    ) -> None:
        old, new = change
        log.info("%s -> %s", old, new)
        # The step limit restarts from where the arm is: the handover ramps from the follower's pose.
        self.safety.reset(observation)
        if new == ControlState.INTERVENING:
            state.takeovers += 1
        elif new == ControlState.AUTONOMOUS:
            self.runner.restart()  # the policy resumes from the current state with a fresh chunk
        elif new == ControlState.STOPPED:
            self._emergency_stop()

    def _emergency_stop(self) -> None:
        """Torque off where the robot has a motor bus (LeRobot's arms); the sim just stops."""
        log.error("EMERGENCY STOP: nothing more is sent to the robot")
        bus = self.robot.bus if isinstance(self.robot, MotorBusRobot) else None
        if bus is not None:
            try:
                bus.disable_torque()
                log.error("torque disabled on %s", self.robot)
            except Exception:
                log.exception("could not disable torque on %s", self.robot)

    def _pressed(self, snapshot: TeleopSnapshot, state: _EpisodeState, key: str) -> bool:
        return snapshot.keys.get(key, 0) > (state.keys_at_start or {}).get(key, 0)

    def _publish_observation(
        self, observation: dict[str, Any], episode: int, frame: int, task: str
    ) -> Observation:
        state_vec = np.array([observation[name] for name in self._scalar_names], dtype=np.float32)
        sim_task = self.episodic.task_name if self.episodic is not None else ""
        view = Observation(episode, frame, task, tuple(self._scalar_names), state_vec, sim_task)
        self.events.send(view)
        return view

    def _finish_episode(
        self, episode: int, state: _EpisodeState, end_reason: str, misses_before: int
    ) -> EpisodeResult:
        success = end_reason in ("success", "operator_success")
        cadence = self.rate.report()
        info = None
        if end_reason in ("operator_rerecord", "stopped", "estop") or state.frames == 0:
            data_type = None
        else:
            if self.policy.version == 0 and state.intervention_frames == state.frames:
                data_type = DataType.DEMO
            elif state.intervention_frames > 0:
                data_type = DataType.INTERVENTION
            else:
                data_type = DataType.AUTO
            info = EpisodeInfo(
                data_type=data_type,
                success=success,
                num_intervention_frames=state.intervention_frames,
                policy_versions=sorted(state.versions),
                operator=self._operator_name(),
                robot=self.robot.name,
                seed=self.episodic.episode_seed if self.episodic is not None else -1,
                end_reason=end_reason,
            )
        end = EpisodeEnd(episode, success, end_reason, None if data_type is None else str(data_type), info)
        for sink in reversed(self.sinks):  # the recorder first: it saves (or drops), the view says so
            sink.end_episode(end)
        result = EpisodeResult(
            episode,
            state.frames,
            success,
            data_type,
            state.intervention_frames,
            end_reason,
            cadence,
            self.runner.misses - misses_before,
            state.takeovers,
        )
        log.info(
            "episode %d: %s after %d frames, %s, %d intervention frames (%d takeovers)",
            episode,
            end_reason,
            state.frames,
            data_type or "discarded",
            state.intervention_frames,
            state.takeovers,
        )
        if self.cfg.report_cadence:
            log.info(cadence.line())
        self._warn_about_faults()
        return result

    def _warn_about_faults(self) -> None:
        """Say (once per change) what went wrong beside the loop: it never stops the loop."""
        counts = {
            **{f"safety: {event}": n for event, n in self.safety.events.items()},
            "ticks the policy had no action ready (held)": self.runner.misses,
            "policy inference errors": self.runner.errors,
            "malformed teleop messages": self.link.rejected,
            "lockstep teleop timeouts": self.link.lockstep_timeouts,
        }
        for what, count in counts.items():
            if count > self._fault_counts.get(what, 0):
                log.warning("%s so far: %d", what, count)
        self._fault_counts = counts

    def _operator_name(self) -> str:
        if self.cfg.teleop is not None:
            # Only the simulated operator has a skill (its label-quality truth); LeRobot's
            # teleoperator configs do not, and are not ours to extend.
            return self.cfg.teleop.type + (
                f":{self.cfg.teleop.skill}" if hasattr(self.cfg.teleop, "skill") else ""
            )
        return "teleop-process"
