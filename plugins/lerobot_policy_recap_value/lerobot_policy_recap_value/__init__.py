"""Registers flywheel's RECAP value function with LeRobot (imported by LeRobot's plugin discovery).

Importing the configuration registers `--policy.type=recap_value`; LeRobot then finds the policy
class and the processor factory by module name (configuration_ -> modeling_ / processor_).
"""

from flywheel.policies.recap_value.configuration_recap_value import RecapValueConfig
from flywheel.policies.recap_value.modeling_recap_value import RecapValuePolicy
from flywheel.policies.recap_value.processor_recap_value import make_recap_value_pre_post_processors

__all__ = ["RecapValueConfig", "RecapValuePolicy", "make_recap_value_pre_post_processors"]
