"""What flywheel knows about the MetaWorld tasks it simulates: names, instructions, experts, progress.

MetaWorld's 39-dim state (metaworld 3.0): hand xyz, gripper opening, object 1 position and
quaternion, object 2 position and quaternion (zeros when absent), the same 18 values one step
earlier, and the goal position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from metaworld import policies

_CURRENT = [
    "hand_x", "hand_y", "hand_z", "gripper_open",
    "obj_x", "obj_y", "obj_z", "obj_qw", "obj_qx", "obj_qy", "obj_qz",
    "obj2_x", "obj2_y", "obj2_z", "obj2_qw", "obj2_qx", "obj2_qy", "obj2_qz",
]  # fmt: skip
STATE_NAMES: tuple[str, ...] = (*_CURRENT, *(f"prev_{n}" for n in _CURRENT), "goal_x", "goal_y", "goal_z")
ACTION_NAMES: tuple[str, ...] = ("delta_x", "delta_y", "delta_z", "gripper")

HAND = slice(0, 3)
OBJECT = slice(4, 7)
GOAL = slice(36, 39)


@dataclass(frozen=True)
class SimTask:
    name: str
    instruction: str  # the language task recorded with every frame
    expert: type  # a metaworld.policies class: get_action(obs) -> 4-dim action
    uses_object: bool  # False: progress is the hand's distance to the goal

    def progress_distance(self, state: np.ndarray) -> float:
        """Distance still to cover: hand to object to goal (or hand to goal). Lower is better."""
        hand, goal = state[HAND], state[GOAL]
        if not self.uses_object:
            return float(np.linalg.norm(hand - goal))
        obj = state[OBJECT]
        return float(np.linalg.norm(hand - obj) + np.linalg.norm(obj - goal))


TASKS: dict[str, SimTask] = {
    t.name: t
    for t in (
        SimTask("reach-v3", "reach the goal position", policies.SawyerReachV3Policy, uses_object=False),
        SimTask("push-v3", "push the puck to the goal", policies.SawyerPushV3Policy, uses_object=True),
        SimTask(
            "pick-place-v3",
            "pick up the puck and place it at the goal",
            policies.SawyerPickPlaceV3Policy,
            uses_object=True,
        ),
    )
}


def get_task(name: str, field: str = "task") -> SimTask:
    if name not in TASKS:
        raise ValueError(f"{field}: unknown sim task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
