"""Configuration dataclasses of the flywheel's commands (parsed by draccus, LeRobot's style).

`flywheel <command> --help` lists every field below with its default. A preset such as
`--robot sim` expands to the flags in configs/robots/sim.yaml (see flywheel.presets).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lerobot.robots.config import RobotConfig
from lerobot.teleoperators.config import TeleoperatorConfig

import robots  # noqa: F401  (registers the sim robot type)
import teleop  # noqa: F401  (registers the sim operator and the pedals)
from flywheel.rollout.safety import SafetyConfig
from flywheel.security import Security
from flywheel.viz.config import RerunConfig
from teleop.pedals import PedalConfig


@dataclass
class WireConfig:
    """ZeroMQ addresses. Loopback by default; see docs/protocol.md."""

    # The rollout daemon publishes observations and episode events here.
    daemon_events: str = "tcp://127.0.0.1:5555"
    # The teleop process publishes operator actions, pedal and keys here.
    teleop_state: str = "tcp://127.0.0.1:5556"
    # The rollout daemon takes deploy / rollback requests here (request/reply).
    deploy: str = "tcp://127.0.0.1:5557"
    # CurveZMQ keys (made by `flywheel keys`). Without them every socket must bind to loopback;
    # with them, only processes whose public key is in <keys_dir>/public are heard.
    keys_dir: Path | None = None

    def security(self, identity: str) -> Security | None:
        return None if self.keys_dir is None else Security(Path(self.keys_dir), identity)

    @classmethod
    def in_process(cls, name: str) -> WireConfig:
        """ZeroMQ inproc:// addresses, unique per call: a daemon run inside another program
        (evaluation, the demo, benchmarks) opens no TCP port and can run beside a live one."""
        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        return cls(f"inproc://{tag}-events", f"inproc://{tag}-teleop", f"inproc://{tag}-deploy")


@dataclass
class DatasetConfig:
    # Where episodes are recorded (a LeRobotDataset v3). Appended to when it exists.
    root: Path = Path("outputs/datasets/flywheel")
    # The dataset's repo id (used only as a name: nothing is pushed).
    repo_id: str = "local/flywheel"
    # Store camera streams as videos (LeRobot's default) instead of per-frame PNG in parquet.
    # Off by default: LeRobot v3 appends episodes to shared video files, which rewrites them.
    video: bool = False
    # Record at all (off: benchmarks and dry runs; nothing is written).
    record: bool = True


@dataclass
class PolicySourceConfig:
    # A LeRobot pretrained policy folder (e.g. outputs/train/.../pretrained_model). Overrides `baseline`.
    path: Path | None = None
    # Without a path: `hold` (keep still) or `random` (a random walk that drifts, to exercise takeovers).
    baseline: str = "hold"
    # Recorded as policy_version on the frames it acts on. Default: the registry version when `path`
    # is a registry folder (models/vNNNN), 1 for another pretrained folder, -1 for a baseline.
    # (0 is reserved for the operator.)
    version: int | None = None
    # Device for a pretrained policy.
    device: str = "cpu"
    # Start computing the next chunk when this many actions are left in the queue.
    refill_at: int = 5
    # Torch threads for inference in the daemon (0: torch's default). One leaves a core to the
    # control loop and the recorder on a small computer; more helps a large model on a big one.
    torch_threads: int = 1
    # Seed of the random baseline.
    seed: int = 0

    def __post_init__(self):
        if self.path is None and self.baseline not in ("hold", "random"):
            raise ValueError(f"policy.baseline: {self.baseline!r} is not one of 'hold', 'random'")
        if self.refill_at < 0:
            raise ValueError(f"policy.refill_at: {self.refill_at} must be >= 0")


@dataclass
class RolloutConfig:
    """The rollout daemon: runs the policy on the robot, hands over to the operator on pedal down,
    records every episode."""

    robot: RobotConfig | None = None
    policy: PolicySourceConfig = field(default_factory=PolicySourceConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    # The operator's device and pedal. Used in this process only with local_teleop=true; otherwise
    # they belong to `flywheel teleop`, which the daemon listens to over ZeroMQ.
    teleop: TeleoperatorConfig | None = None
    pedal: PedalConfig | None = None
    # Read the operator and pedal in this process (no teleop process needed).
    local_teleop: bool = False
    # Episodes to record; 0 runs until stopped.
    episodes: int = 0
    # Control rate in Hz. 0: as fast as possible, in lockstep with the teleop process (sim only).
    fps: int = 30
    # An episode times out after this many seconds (converted to steps at `fps`, or at 30 when fps=0).
    episode_time_s: float = 20.0
    # Pause between episodes (real arms: time to reset the scene). Ignored by the sim.
    reset_time_s: float = 0.0
    # The language task recorded with each frame. Default: the sim task's instruction.
    task: str | None = None
    # During an intervention, hold position when the newest teleop state is older than this.
    teleop_timeout_ms: float = 100.0
    # Wait this long for the teleop process before the first episode (then start without takeovers).
    teleop_wait_s: float = 60.0
    # In lockstep (fps=0), how long to wait for the teleop process's answer to each observation.
    lockstep_timeout_ms: float = 2000.0
    # Print a cadence report (tick lateness percentiles) at the end of each episode.
    report_cadence: bool = True
    # Joint limits and the per-tick step limit (bumpless takeover) applied to every command.
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    # Stream the rollouts to Rerun (--rerun.save=FILE.rrd, --rerun.serve=true, --rerun.spawn=true).
    rerun: RerunConfig = field(default_factory=RerunConfig)

    def __post_init__(self):
        if self.fps < 0:
            raise ValueError(f"fps: {self.fps} must be >= 0")
        if self.episodes < 0:
            raise ValueError(f"episodes: {self.episodes} must be >= 0")
        if self.episode_time_s <= 0:
            raise ValueError(f"episode_time_s: {self.episode_time_s} must be > 0")

    @property
    def max_episode_steps(self) -> int:
        return max(1, round(self.episode_time_s * (self.fps or 30)))


@dataclass
class TeleopProcessConfig:
    """The teleop process: reads the operator device and the pedal, publishes them to the daemon."""

    teleop: TeleoperatorConfig | None = None
    pedal: PedalConfig | None = None
    wire: WireConfig = field(default_factory=WireConfig)
    # Publish rate in Hz when no observation arrives (keep it at or above the control rate).
    fps: int = 60


@dataclass
class RunConfig:
    """`flywheel run`: the rollout daemon and the teleop process (and, later, the trainer), supervised."""

    robot: RobotConfig | None = None
    teleop: TeleoperatorConfig | None = None
    pedal: PedalConfig | None = None
    policy: PolicySourceConfig = field(default_factory=PolicySourceConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    episodes: int = 0
    fps: int = 30
    episode_time_s: float = 20.0
    reset_time_s: float = 0.0
    task: str | None = None
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    rerun: RerunConfig = field(default_factory=RerunConfig)
    # Teleop publish rate in Hz.
    teleop_fps: int = 60
    # Restart a crashed child at most this many times (with exponential backoff).
    max_restarts: int = 3
    # Where the children's resolved configs and logs go. Default: <dataset.root>/../runs/<time>.
    run_dir: Path | None = None
    # Also run the background trainer: RECAP iterations on the new episodes, gate, hot-swap.
    trainer: bool = False
    # The trainer's own settings: a YAML of `flywheel trainer` fields (see its --help). The dataset,
    # the wire and the sim task come from this run.
    trainer_config: Path | None = None
    # New episodes per continuous training iteration.
    train_every: int = 10
    # The model registry the trainer publishes to.
    registry: Path = Path("outputs/models")

    def rollout_config(self) -> RolloutConfig:
        return RolloutConfig(
            robot=self.robot,
            teleop=self.teleop,  # read by the teleop process; the daemon records its name as the operator
            pedal=self.pedal,
            policy=self.policy,
            dataset=self.dataset,
            wire=self.wire,
            episodes=self.episodes,
            fps=self.fps,
            episode_time_s=self.episode_time_s,
            reset_time_s=self.reset_time_s,
            task=self.task,
            safety=self.safety,
            rerun=self.rerun,
        )

    def teleop_config(self) -> TeleopProcessConfig:
        return TeleopProcessConfig(teleop=self.teleop, pedal=self.pedal, wire=self.wire, fps=self.teleop_fps)


@dataclass
class RecordConfig:
    """`flywheel record`: operator-only demonstrations (data_type=demo), no policy."""

    robot: RobotConfig | None = None
    teleop: TeleoperatorConfig | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    episodes: int = 1
    fps: int = 30
    episode_time_s: float = 20.0
    reset_time_s: float = 0.0
    task: str | None = None

    def rollout_config(self) -> RolloutConfig:
        """Recording demos is a rollout whose pedal is always down and whose policy is absent."""
        from teleop.pedals import ConstantPedalConfig

        return RolloutConfig(
            robot=self.robot,
            teleop=self.teleop,
            pedal=ConstantPedalConfig(pressed=True),
            local_teleop=True,
            policy=PolicySourceConfig(baseline="hold", version=0),
            dataset=self.dataset,
            wire=self.wire,
            episodes=self.episodes,
            fps=self.fps,
            episode_time_s=self.episode_time_s,
            reset_time_s=self.reset_time_s,
            task=self.task,
        )


@dataclass
class DeployConfig:
    """`flywheel deploy`: send a registry version (or a rollback) to the running rollout daemon."""

    # The registry version to deploy (models/vNNNN). Default: the newest.
    version: int | None = None
    # Go back to the version that acted before the current one.
    rollback: bool = False
    # The model registry's folder.
    registry: Path = Path("outputs/models")
    wire: WireConfig = field(default_factory=WireConfig)
    # How long to wait for the daemon's answer (loading and checking a large model takes a while).
    timeout_s: float = 120.0
    # How long to wait for the daemon's socket to accept the connection before saying it is absent.
    connect_timeout_s: float = 1.0

    def __post_init__(self):
        if self.rollback and self.version is not None:
            raise ValueError("version: give either --version or --rollback, not both")
        for name in ("timeout_s", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: {getattr(self, name)} must be positive")


@dataclass
class KeysConfig:
    """`flywheel keys`: CurveZMQ key pairs for the daemon, teleop, trainer and operator."""

    # Where the keys go: public/ (copy to every machine) and private/ (each machine keeps its own).
    keys_dir: Path = Path("outputs/keys")


@dataclass
class CalibrateConfig:
    """`flywheel calibrate --robot so100`: LeRobot's own interactive calibration of the follower and
    the leader; the files go where LeRobot keeps them, and every flywheel command reuses them."""

    robot: RobotConfig | None = None
    teleop: TeleoperatorConfig | None = None
    # Which arms: both, robot (the follower) or teleop (the leader).
    which: str = "both"

    def __post_init__(self):
        if self.which not in ("both", "robot", "teleop"):
            raise ValueError(f"which: {self.which!r} is not one of 'both', 'robot', 'teleop'")
