from __future__ import annotations

from dataclasses import dataclass

from lerobot.teleoperators.config import TeleoperatorConfig

SKILLS = ("good", "slow", "drift", "burst", "noisy")


@TeleoperatorConfig.register_subclass("sim_operator")
@dataclass(kw_only=True)
class SimOperatorConfig(TeleoperatorConfig):
    """A simulated person on a leader arm: MetaWorld's scripted expert with human-like flaws."""

    # good: the expert with small noise; slow: hesitant, with pauses; drift: correlated wandering;
    # burst: now and then a burst of wrong actions; noisy: heavy noise.
    skill: str = "good"
    # Standard deviation of the noise added to each action (the skill may scale it).
    noise_std: float = 0.1
    # The operator acts on what the arm looked like this many frames ago.
    reaction_delay_frames: int = 2
    # Where the operator watches the scene: `local` (a sim in this process) or the rollout daemon's
    # event address (e.g. tcp://127.0.0.1:5555), fed by the teleop process.
    observation_source: str = "daemon"
    # Seed of the operator's noise and lapses.
    seed: int = 0

    def __post_init__(self):
        if self.skill not in SKILLS:
            raise ValueError(f"teleop.skill: {self.skill!r} is not one of {list(SKILLS)}")
        if self.noise_std < 0:
            raise ValueError(f"teleop.noise_std: {self.noise_std} must be >= 0")
        if self.reaction_delay_frames < 0:
            raise ValueError(f"teleop.reaction_delay_frames: {self.reaction_delay_frames} must be >= 0")
        if self.observation_source not in ("local", "daemon"):
            raise ValueError(
                f"teleop.observation_source: {self.observation_source!r} is not 'local' or 'daemon'"
            )
