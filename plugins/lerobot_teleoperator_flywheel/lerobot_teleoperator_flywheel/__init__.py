"""Registers flywheel's teleoperators with LeRobot (imported by LeRobot's plugin discovery)."""

from teleop.sim_operator import SimOperator, SimOperatorConfig

__all__ = ["SimOperator", "SimOperatorConfig"]
