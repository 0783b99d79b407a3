"""What flywheel knows about the MetaWorld tasks it simulates: names, instructions, experts, progress.

Every task of MetaWorld's MT50 set is supported: each has a scripted expert in `metaworld.policies`
(`ENV_POLICY_MAP`), which the simulated operator drives with. tests/test_mt50.py checks that each
one resets, steps and is solved by its expert; docs/sim.md lists them.

MetaWorld's 39-dim state (metaworld 3.0): hand xyz, gripper opening, object 1 position and
quaternion, object 2 position and quaternion (zeros when absent), the same 18 values one step
earlier, and the goal position. Which body "object 1" is, and which point the goal is a target for,
differ by task (a puck, a drawer handle, a button, a lock's start site, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from metaworld.policies import ENV_POLICY_MAP

# Feature names follow LeRobot's convention: a state value ends in `.pos`, a velocity command in
# `.vel`. Stock lerobot-rollout (lerobot/rollout/context.py, build_rollout_context) routes only
# `.pos`/`.vel` robot features (and cameras) to the policy and the dataset, so without the suffixes it
# would build a policy with no state and no action keys.
_CURRENT = [
    "hand_x", "hand_y", "hand_z", "gripper_open",
    "obj_x", "obj_y", "obj_z", "obj_qw", "obj_qx", "obj_qy", "obj_qz",
    "obj2_x", "obj2_y", "obj2_z", "obj2_qw", "obj2_qx", "obj2_qy", "obj2_qz",
]  # fmt: skip
STATE_NAMES: tuple[str, ...] = tuple(
    f"{n}.pos" for n in (*_CURRENT, *(f"prev_{n}" for n in _CURRENT), "goal_x", "goal_y", "goal_z")
)
# MetaWorld's action is a per-step displacement of the hand (a velocity command, scaled to [-1, 1]) and
# the gripper's closing effort, hence `.vel` on all four.
ACTION_NAMES: tuple[str, ...] = ("hand_x.vel", "hand_y.vel", "hand_z.vel", "gripper.vel")

HAND = slice(0, 3)
OBJECT = slice(4, 7)
GOAL = slice(36, 39)

# Progress measures (SimTask.progress):
HAND_TO_GOAL = "hand"  # the hand is what must reach the goal
VIA_OBJECT = "object"  # hand to object, then object to goal
PROGRESS_KINDS = (HAND_TO_GOAL, VIA_OBJECT, None)


@dataclass(frozen=True)
class SimTask:
    name: str
    instruction: str  # the language task recorded with every frame
    expert: type  # a metaworld.policies class: get_action(obs) -> 4-dim action
    # How far the scene is from done, from the state alone (the simulated pedal's judge): "hand",
    # "object", or None where neither is right for the task. A measure is given only where the
    # task's own expert makes it fall steadily: along the expert's solved runs (seeds 0-2) it ends at
    # most 2/3 of where it started and never grows by more than 3 cm over 20 frames (the sim pedal's
    # default drift test), so a perfect operator never looks like drifting. Tested in test_mt50.py.
    progress: str | None

    @property
    def uses_object(self) -> bool:
        return self.progress == VIA_OBJECT

    def progress_distance(self, state: np.ndarray) -> float:
        """Distance still to cover: hand to object to goal, or hand to goal. Lower is better."""
        hand, goal = state[HAND], state[GOAL]
        if self.progress == HAND_TO_GOAL:
            return float(np.linalg.norm(hand - goal))
        if self.progress == VIA_OBJECT:
            obj = state[OBJECT]
            return float(np.linalg.norm(hand - obj) + np.linalg.norm(obj - goal))
        raise ValueError(
            f"sim task {self.name!r} has no progress measure (the state's object and goal do not track "
            "how far it is from done), so the simulated pedal cannot judge it; use pedal.type=constant, "
            "schedule or keyboard"
        )


# name: (instruction, progress). The first three instructions are byte-identical to those recorded
# before the MT50 set was added: datasets and trained prompts carry them.
_MT50: dict[str, tuple[str, str | None]] = {
    "reach-v3": ("reach the goal position", HAND_TO_GOAL),
    "push-v3": ("push the puck to the goal", VIA_OBJECT),
    "pick-place-v3": ("pick up the puck and place it at the goal", VIA_OBJECT),
    "assembly-v3": ("put the ring onto the peg", VIA_OBJECT),
    "basketball-v3": ("put the ball into the basket", VIA_OBJECT),
    "bin-picking-v3": ("move the cube from one bin to the other", None),
    "box-close-v3": ("put the lid on the box", None),
    "button-press-topdown-v3": ("press the button from the top", VIA_OBJECT),
    "button-press-topdown-wall-v3": ("reach over the wall and press the button from the top", VIA_OBJECT),
    "button-press-v3": ("press the button", VIA_OBJECT),
    "button-press-wall-v3": ("reach past the wall and press the button", VIA_OBJECT),
    "coffee-button-v3": ("press the button on the coffee machine", VIA_OBJECT),
    "coffee-pull-v3": ("pull the mug out from the coffee machine", VIA_OBJECT),
    "coffee-push-v3": ("push the mug under the coffee machine", VIA_OBJECT),
    "dial-turn-v3": ("turn the dial", VIA_OBJECT),
    "disassemble-v3": ("pull the ring off the peg", None),
    "door-close-v3": ("close the door", VIA_OBJECT),
    "door-lock-v3": ("turn the lock to lock the door", None),
    "door-open-v3": ("open the door", VIA_OBJECT),
    "door-unlock-v3": ("turn the lock to unlock the door", VIA_OBJECT),
    "drawer-close-v3": ("close the drawer", None),
    "drawer-open-v3": ("open the drawer", None),
    "faucet-close-v3": ("turn the faucet handle to close the faucet", VIA_OBJECT),
    "faucet-open-v3": ("turn the faucet handle to open the faucet", VIA_OBJECT),
    "hammer-v3": ("hammer the nail into the wall", VIA_OBJECT),
    "hand-insert-v3": ("push the block into the hole", VIA_OBJECT),
    "handle-press-side-v3": ("press the handle down from the side", VIA_OBJECT),
    "handle-press-v3": ("press the handle down", VIA_OBJECT),
    "handle-pull-side-v3": ("pull the handle up from the side", VIA_OBJECT),
    "handle-pull-v3": ("pull the handle up", VIA_OBJECT),
    "lever-pull-v3": ("pull the lever up", VIA_OBJECT),
    "peg-insert-side-v3": ("insert the peg into the hole from the side", VIA_OBJECT),
    "peg-unplug-side-v3": ("pull the peg out of the hole sideways", VIA_OBJECT),
    "pick-out-of-hole-v3": ("pick the puck out of the hole and place it at the goal", VIA_OBJECT),
    "pick-place-wall-v3": ("pick up the puck and place it at the goal behind the wall", VIA_OBJECT),
    "plate-slide-v3": ("slide the plate into the cabinet", VIA_OBJECT),
    "plate-slide-side-v3": ("slide the plate sideways into the cabinet", VIA_OBJECT),
    "plate-slide-back-v3": ("slide the plate back out of the cabinet", VIA_OBJECT),
    "plate-slide-back-side-v3": ("slide the plate sideways out of the cabinet", VIA_OBJECT),
    "push-back-v3": ("pull the puck back to the goal", None),
    "push-wall-v3": ("push the puck around the wall to the goal", VIA_OBJECT),
    "reach-wall-v3": ("reach over the wall to the goal position", HAND_TO_GOAL),
    "shelf-place-v3": ("pick up the puck and place it on the shelf", VIA_OBJECT),
    "soccer-v3": ("kick the ball into the goal", VIA_OBJECT),
    "stick-pull-v3": ("grasp the stick and pull the box with it", None),
    "stick-push-v3": ("grasp the stick and push the box with it", VIA_OBJECT),
    "sweep-into-v3": ("sweep the puck into the hole", VIA_OBJECT),
    "sweep-v3": ("sweep the puck off the table", VIA_OBJECT),
    "window-close-v3": ("slide the window closed", None),
    "window-open-v3": ("slide the window open", VIA_OBJECT),
}

TASKS: dict[str, SimTask] = {
    name: SimTask(name, instruction, ENV_POLICY_MAP[name], progress)
    for name, (instruction, progress) in _MT50.items()
}


def get_task(name: str, field: str = "task") -> SimTask:
    if name not in TASKS:
        raise ValueError(f"{field}: unknown sim task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
