"""pi_star_recap: a pi0.5-architecture VLA with RECAP advantage conditioning and CFG (LeRobot policy)."""

from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig
from flywheel.policies.pi_star_recap.modeling_pi_star_recap import PiStarRECAPPolicy
from flywheel.policies.pi_star_recap.processor_pi_star_recap import make_pi_star_recap_pre_post_processors

__all__ = ["PiStarRECAPConfig", "PiStarRECAPPolicy", "make_pi_star_recap_pre_post_processors"]
