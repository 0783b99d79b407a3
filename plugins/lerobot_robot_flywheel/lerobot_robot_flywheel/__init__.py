"""Registers flywheel's robots with LeRobot (imported by LeRobot's plugin discovery).

Also registers the sim as a LeRobot environment (`lerobot-eval --env.type=flywheel_sim`).
"""

from robots.sim import SimArm, SimArmConfig
from robots.sim.gym_env import FlywheelSimEnvConfig

__all__ = ["FlywheelSimEnvConfig", "SimArm", "SimArmConfig"]
