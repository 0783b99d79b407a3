"""The RECAP value function as a LeRobot policy type (`recap_value`)."""

from flywheel.policies.recap_value.configuration_recap_value import RecapValueConfig
from flywheel.policies.recap_value.modeling_recap_value import RecapValuePolicy
from flywheel.policies.recap_value.processor_recap_value import make_recap_value_pre_post_processors

__all__ = ["RecapValueConfig", "RecapValuePolicy", "make_recap_value_pre_post_processors"]
