"""Configuration dataclasses of the flywheel's commands (parsed by draccus, LeRobot's style).

`flywheel <command> --help` lists every field below with its default. A preset such as
`--robot sim` expands to the flags in configs/robots/sim.yaml (see flywheel.presets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lerobot.robots.config import RobotConfig
from lerobot.teleoperators.config import TeleoperatorConfig

import robots  # noqa: F401  (registers the sim robot type)
import teleop  # noqa: F401  (registers the sim operator and the pedals)
from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.security import IDENTITIES
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.safety import SafetyConfig
from flywheel.viz.config import RerunConfig
from teleop.pedals import PedalConfig
from teleop.process import TeleopProcessConfig


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
    # A leader arm with torque follows the follower while the policy drives, so a takeover starts
    # aligned (`flywheel teleop --help`, mirror); mirror_max_step bounds the leader's step per tick.
    mirror: bool = False
    mirror_max_step: float | None = 5.0
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
    # This arm is one of a fleet: the trainer's fleet endpoint on another computer (its
    # --fleet.bind, e.g. tcp://gpu-box:5560; beyond loopback with --wire.keys_dir). The run then also
    # starts `flywheel uplink`, which ships the episodes there and brings new weights home
    # (docs/deployment.md). Not with --trainer=true, which trains on this machine.
    trainer_address: str | None = None
    # This arm's name on the trainer (default: the host name).
    arm: str | None = None
    # The uplink's key pair in --wire.keys_dir. All arms may share `uplink`; one identity per arm
    # (`flywheel keys --identities=uplink-kitchen`) lets the trainer's keys_dir admit or revoke each.
    uplink_identity: str = "uplink"

    def __post_init__(self):
        if self.trainer and self.trainer_address is not None:
            raise ValueError(
                f"trainer_address: {self.trainer_address} sends the episodes to a trainer elsewhere; "
                "drop --trainer=true (a trainer on this machine) or --trainer_address"
            )
        if self.arm is not None and self.trainer_address is None:
            raise ValueError(
                f"arm: {self.arm!r} names this arm on a fleet's trainer; give --trainer_address too"
            )
        if self.uplink_identity != "uplink" and self.trainer_address is None:
            raise ValueError(
                f"uplink_identity: {self.uplink_identity!r} is the uplink's key to a fleet's trainer; "
                "give --trainer_address too"
            )

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
        return TeleopProcessConfig(
            teleop=self.teleop,
            pedal=self.pedal,
            wire=self.wire,
            fps=self.teleop_fps,
            mirror=self.mirror,
            mirror_max_step=self.mirror_max_step,
        )


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
    """`flywheel keys`: CurveZMQ key pairs for the daemon, teleop, trainer and operator (and any
    further identities, e.g. an uplink per arm host)."""

    # Where the keys go: public/ (copy to every machine) and private/ (each machine keeps its own).
    keys_dir: Path = Path("outputs/keys")
    # Extra identities besides daemon, teleop, trainer and operator, comma-separated: e.g.
    # "uplink,arm-kitchen" (one per arm host's uplink: --identity=arm-kitchen). Existing keys are kept.
    identities: str = ""

    def names(self) -> tuple[str, ...]:
        """Every identity to make: the standard ones and the extra ones."""
        extra = tuple(name.strip() for name in self.identities.split(",") if name.strip())
        return IDENTITIES + extra

    def __post_init__(self) -> None:
        for name in self.names():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"identities: {name!r} is not a key name ([A-Za-z0-9_-]{{1,64}})")


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
