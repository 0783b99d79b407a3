"""Faster, bit-identical replacements for the Python hot spots of a MetaWorld 3.0.0 step.

The sim applies this to the one env it creates (`SimArm.connect` calls `patch(env)`, which swaps
that env's class for a subclass of its own task class); nothing here changes MetaWorld's classes or
modules, so other MetaWorld envs in the same process (and anything that imports this module without
calling `patch`) keep MetaWorld's own code. What the subclass overrides:

1. `SawyerXYZEnv.touching_object` (metaworld/sawyer_xyz_env.py). MetaWorld walks `data.contact`
   twice in Python list comprehensions. `MjContactList` has no `__iter__`, so each walk goes through
   `__getitem__` until it raises `IndexError`, and that one exception (a C++ exception translated
   by pybind11) costs 0.25-0.85 ms on the 2-core machine, the more the busier it is, where reading
   a contact costs 1 us: over half of a push-v3 step went there. The same test runs here on the
   contact arrays (`data.contact.geom1/geom2/efc_address`), and the selected forces are summed in
   contact order with Python's `sum`, starting from 0, exactly as MetaWorld sums them. 14 MT50
   tasks call it every step (`info["grasp_success"]`): push, pick-place, their walls, push-back,
   shelf-place, soccer, sweep(-into), coffee push/pull, stick push/pull, hand-insert.
2. `Rotation.from_matrix(xmat).as_quat()` inside the task's `_get_quat_objects` (22 MT50 tasks
   read their object's orientation this way, every step). scipy 1.17 spends most of the call
   (25-40 us, against 4 us for the conversion itself) in its Python layers and in checking that
   the matrix is a proper rotation (`det`, Gramian `isclose`). Here a cheaper check in plain
   floats, with a 10x tighter tolerance than scipy's (`atol=1e-12`), decides when scipy's check
   would certainly pass, and then calls the same compiled conversion scipy would
   (`_rotation_cy.from_matrix(..., assume_valid=True)`); any other matrix goes to scipy's full
   path. The task's own `_get_quat_objects` code runs unchanged, only with `Rotation` bound to this
   fast stand-in (a copy of the function with that one global replaced).
3. `SawyerXYZEnv._get_curr_obs_combined_no_goal`: the 18-number current observation, built with
   element copies into one array instead of `np.split` / `np.hstack` per object; the numbers
   (`np.linalg.norm`, `np.clip`, the task's `_get_pos_objects` / `_get_quat_objects`) are computed
   by the same calls as MetaWorld's.

Only for metaworld 3.0.0 (the pinned version; its source is what was read), and for the
rotation part scipy 1.17.x. On another version `patch` logs a warning and changes nothing (or
leaves the rotation part out): MetaWorld's code may have changed under it. tests/test_sim_speed.py
checks that states, rewards and info flags are bit-identical with and without the patch, and
docs/benchmarks.md has the speed-up. `FLYWHEEL_SIM_FAST=0` in the environment turns it off.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import types
from typing import Any

import numpy as np
from metaworld.sawyer_xyz_env import SawyerXYZEnv
from scipy.spatial.transform import Rotation

try:  # the compiled backend scipy 1.17's and 1.18's Rotation.from_matrix call
    from scipy.spatial.transform import _rotation_cy
except ImportError:  # another scipy layout: the rotation shortcut is left out
    _rotation_cy = None

log = logging.getLogger(__name__)

METAWORLD_VERSION = "3.0.0"
# The scipy releases whose Rotation.from_matrix the shortcut was checked against, bit for bit
# (tests/test_sim_speed.py).
SCIPY_SERIES = ("1.17.", "1.18.")
# The tolerance under which a matrix is surely accepted by scipy's rotation check (its own is
# atol 1e-12, plus rtol 1e-5 on the diagonal); the margin covers rounding differences between this
# check (plain floats) and scipy's (matmul, LAPACK det), which are ~1e-16.
_ORTHOGONAL_TOL = 1e-13


def enabled() -> bool:
    """False when FLYWHEEL_SIM_FAST is set to 0/false/no/off (to compare against MetaWorld's own code)."""
    return os.environ.get("FLYWHEEL_SIM_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def touching_object(self: Any, object_geom_id: int) -> bool:
    """`SawyerXYZEnv.touching_object` on the contact arrays: both finger pads push on the object."""
    contact = self.data.contact
    geom1, geom2 = contact.geom1, contact.geom2
    on_object = (geom1 == object_geom_id) | (geom2 == object_geom_id)
    if not on_object.any():
        # MetaWorld's sums are then both empty, 0, and 0 < 0 is False.
        return False
    left_id, right_id = self._flywheel_pads
    efc_force, efc_address = self.data.efc_force, contact.efc_address
    # Python's sum over Python floats in contact order: the additions MetaWorld does on np.float64
    # (same IEEE doubles), so the sign test sees the same number. An efc_address of -1 indexes the
    # last force in both, as in MetaWorld.
    left = sum(efc_force[efc_address[on_object & ((geom1 == left_id) | (geom2 == left_id))]].tolist())
    right = sum(efc_force[efc_address[on_object & ((geom1 == right_id) | (geom2 == right_id))]].tolist())
    return left > 0 and right > 0


def _quat_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """scipy's `Rotation.from_matrix(matrix).as_quat()` for one 3x3 matrix, bit for bit."""
    if matrix.shape != (3, 3) or matrix.dtype != np.float64:
        return Rotation.from_matrix(matrix).as_quat()
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = matrix.tolist()
    # Row Gramian (scipy tests matrix @ matrix.T against the identity) and the determinant as a
    # triple product; written as `<=`/`>` so that NaN fails them and goes to scipy.
    if (
        abs(a0 * a0 + a1 * a1 + a2 * a2 - 1.0) <= _ORTHOGONAL_TOL
        and abs(b0 * b0 + b1 * b1 + b2 * b2 - 1.0) <= _ORTHOGONAL_TOL
        and abs(c0 * c0 + c1 * c1 + c2 * c2 - 1.0) <= _ORTHOGONAL_TOL
        and abs(a0 * b0 + a1 * b1 + a2 * b2) <= _ORTHOGONAL_TOL
        and abs(a0 * c0 + a1 * c1 + a2 * c2) <= _ORTHOGONAL_TOL
        and abs(b0 * c0 + b1 * c1 + b2 * c2) <= _ORTHOGONAL_TOL
        and c0 * (a1 * b2 - a2 * b1) + c1 * (a2 * b0 - a0 * b2) + c2 * (a0 * b1 - a1 * b0) > 0.5
    ):
        # scipy's check passes, leaves the matrix as it is, and converts it with this call.
        return _rotation_cy.from_matrix(matrix, True)
    return Rotation.from_matrix(matrix).as_quat()


class _FastRotation:
    """Stands in for scipy's `Rotation` in a task's `_get_quat_objects`: `from_matrix(m).as_quat()`."""

    __slots__ = ("_quat",)

    def __init__(self, quat: np.ndarray) -> None:
        self._quat = quat

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> _FastRotation:
        return cls(_quat_from_matrix(np.asarray(matrix)))

    def as_quat(self) -> np.ndarray:
        return self._quat


def _fast_quat_objects(cls: type) -> types.FunctionType | None:
    """The task's own `_get_quat_objects` with `Rotation` bound to `_FastRotation`, or None where
    it does not use scipy's Rotation (a body's `xquat`, zeros)."""
    func = cls._get_quat_objects
    if "Rotation" not in func.__code__.co_names or func.__globals__.get("Rotation") is not Rotation:
        return None
    # The method reads only `from_matrix(...).as_quat()` of Rotation in metaworld 3.0.0; anything
    # else would fail loudly on _FastRotation rather than differ quietly.
    namespace = {**func.__globals__, "Rotation": _FastRotation}
    fast = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__)
    fast.__qualname__ = func.__qualname__
    return fast


def curr_obs_combined_no_goal(self: Any) -> np.ndarray:
    """`SawyerXYZEnv._get_curr_obs_combined_no_goal`: hand xyz, gripper opening, then (xyz, quat) per
    object, zero-padded to 18 numbers."""
    pos_hand = self.get_endeff_pos()
    finger_right, finger_left = self.data.body("rightclaw"), self.data.body("leftclaw")
    # MetaWorld's own calls, so the gripper number is the same double.
    gripper_distance_apart = np.linalg.norm(finger_right.xpos - finger_left.xpos)
    gripper_distance_apart = np.clip(gripper_distance_apart / 0.1, 0.0, 1.0)
    obj_pos = self._get_pos_objects()
    assert len(obj_pos) % 3 == 0
    obj_quat = self._get_quat_objects()
    assert len(obj_quat) % 4 == 0
    count = len(obj_pos) // 3
    if len(obj_quat) // 4 != count or 7 * count > self._obs_obj_max_len:
        # Shapes MetaWorld's own code would refuse or treat specially (none in MT50): let it.
        return SawyerXYZEnv._get_curr_obs_combined_no_goal(self)
    obs = np.zeros(4 + self._obs_obj_max_len)
    obs[0:3] = pos_hand
    obs[3] = gripper_distance_apart
    for i in range(count):
        obs[4 + 7 * i : 7 + 7 * i] = obj_pos[3 * i : 3 * i + 3]
        obs[7 + 7 * i : 11 + 7 * i] = obj_quat[4 * i : 4 * i + 4]
    return obs


def patch(env: Any) -> list[str]:
    """Give this MetaWorld env (the unwrapped `SawyerXYZEnv`) the faster equivalents.

    The env's class is swapped for a subclass of its own that overrides only these methods, so
    `isinstance` and MetaWorld's own code are unaffected, and nothing refers back to the env (bound
    methods stored on it would make a reference cycle, keeping its MuJoCo data alive until the
    cyclic garbage collector runs). Returns what was replaced: empty when this metaworld version is
    not the one they were written for, or when FLYWHEEL_SIM_FAST=0; a method a task class
    overrides itself is left to it."""
    if not enabled():
        return []
    if not isinstance(env, SawyerXYZEnv):
        raise TypeError(f"fast_metaworld.patch expects an unwrapped SawyerXYZEnv, got {type(env).__name__}")
    version = _version("metaworld")
    if version != METAWORLD_VERSION:
        _warn_once(
            f"fast_metaworld: metaworld {version} is installed, the patch is written for "
            f"{METAWORLD_VERSION}; running MetaWorld's own (slower) step code"
        )
        return []
    unpatch(env)
    fast_class = _fast_class(type(env))
    env._flywheel_pads = (env.data.geom("leftpad_geom").id, env.data.geom("rightpad_geom").id)
    env.__class__ = fast_class
    return patched(env)


def unpatch(env: Any) -> None:
    """Back to MetaWorld's own class and methods for this env."""
    plain = type(env).__dict__.get("_flywheel_plain_class")
    if plain is not None:
        env.__class__ = plain
    env.__dict__.pop("_flywheel_pads", None)


def patched(env: Any) -> list[str]:
    """The methods `patch` replaced on this env (empty if none)."""
    return list(type(env).__dict__.get("_flywheel_fast_methods", ()))


@functools.cache
def _fast_class(cls: type) -> type:
    """A subclass of the task's MetaWorld class with the faster methods, once per task class."""
    methods: dict[str, Any] = {}
    if cls.touching_object is SawyerXYZEnv.touching_object:
        methods["touching_object"] = touching_object
    fast_quat = _fast_quat_objects(cls)
    if fast_quat is not None:
        scipy_version = _version("scipy") or "?"
        if scipy_version.startswith(SCIPY_SERIES) and _rotation_cy is not None:
            methods["_get_quat_objects"] = fast_quat
        else:
            _warn_once(
                f"fast_metaworld: scipy {scipy_version} is installed, the rotation shortcut is "
                f"checked against {' and '.join(s + 'x' for s in SCIPY_SERIES)}; leaving it out"
            )
    if cls._get_curr_obs_combined_no_goal is SawyerXYZEnv._get_curr_obs_combined_no_goal:
        methods["_get_curr_obs_combined_no_goal"] = curr_obs_combined_no_goal
    namespace = {
        **methods,
        "__module__": __name__,
        "__doc__": f"{cls.__name__} with robots/sim/fast_metaworld.py's {', '.join(methods)}.",
        "_flywheel_plain_class": cls,
        "_flywheel_fast_methods": tuple(methods),
    }
    return type(cls.__name__, (cls,), namespace)


@functools.cache
def _warn_once(message: str) -> None:
    # Once per process: the batched evaluator connects dozens of arms.
    log.warning(message)
