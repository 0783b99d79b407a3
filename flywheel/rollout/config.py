"""The rollout daemon's configuration (`flywheel rollout --help`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.robots.config import RobotConfig
from lerobot.teleoperators.config import TeleoperatorConfig

import robots  # noqa: F401  (registers the sim robot type)
import teleop  # noqa: F401  (registers the sim operator and the pedals)
from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.safety import SafetyConfig
from flywheel.viz.config import RerunConfig
from teleop.pedals import PedalConfig


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
