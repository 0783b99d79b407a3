from teleop.sim_operator.config_sim_operator import SKILLS, SimOperatorConfig
from teleop.sim_operator.sim_operator import SimOperator

__all__ = ["SKILLS", "SimOperator", "SimOperatorConfig"]
