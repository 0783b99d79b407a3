"""Registers flywheel's robots with LeRobot (imported by LeRobot's plugin discovery)."""

from robots.sim import SimArm, SimArmConfig

__all__ = ["SimArm", "SimArmConfig"]
