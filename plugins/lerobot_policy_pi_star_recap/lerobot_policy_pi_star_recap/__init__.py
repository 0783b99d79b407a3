"""Registers flywheel's pi_star_recap policy with LeRobot (imported by LeRobot's plugin discovery).

Importing the configuration registers `--policy.type=pi_star_recap`; LeRobot then finds the policy
class and the processor factory by module name (configuration_ -> modeling_ / processor_).
"""

from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig
from flywheel.policies.pi_star_recap.modeling_pi_star_recap import PiStarRECAPPolicy
from flywheel.policies.pi_star_recap.processor_pi_star_recap import make_pi_star_recap_pre_post_processors

__all__ = ["PiStarRECAPConfig", "PiStarRECAPPolicy", "make_pi_star_recap_pre_post_processors"]
