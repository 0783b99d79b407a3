from robots.sim.config_sim import SimArmConfig
from robots.sim.sim_arm import LOCAL_SIMS, SimArm
from robots.sim.tasks import ACTION_NAMES, STATE_NAMES, TASKS, SimTask, get_task

__all__ = [
    "ACTION_NAMES",
    "LOCAL_SIMS",
    "STATE_NAMES",
    "TASKS",
    "SimArm",
    "SimArmConfig",
    "SimTask",
    "get_task",
]
