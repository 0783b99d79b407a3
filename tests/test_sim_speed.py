"""robots/sim/fast_metaworld.py: the sim's faster MetaWorld step gives bit-identical outcomes.

Each task runs its scripted expert with MetaWorld's own methods and with the patch, in the same
env and scenes, and every float64 state, reward and info entry (success, grasp_success, ...) and
the MuJoCo qpos/qvel must be equal bit for bit (np.array_equal, no tolerance). The last tests make
sure this comparison can fail: a contact test wrong in one case, or a number off by one ulp,
is caught.
"""

from __future__ import annotations

import gc
import logging
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from metaworld.sawyer_xyz_env import SawyerXYZEnv
from scipy.spatial.transform import Rotation

from robots.sim import SimArm, SimArmConfig, fast_metaworld
from robots.sim.fast_metaworld import _quat_from_matrix
from robots.sim.tasks import TASKS as TASK_TABLE

STEPS = 150
SEEDS = (0, 1, 2)
# Push and pick-place test finger-object contact every step (touching_object) and read the puck's
# rotation (scipy); door-open reads a rotation; reach, drawer-open and button-press-topdown neither
# (only the observation builder); sweep-into and stick-pull (two objects, a rotation and a body
# quaternion) touch objects; hammer has two objects without a rotation; peg-insert-side reads a
# site's rotation.
TASKS = (
    "push-v3",
    "pick-place-v3",
    "reach-v3",
    "drawer-open-v3",
    "door-open-v3",
    "button-press-topdown-v3",
    "sweep-into-v3",
    "stick-pull-v3",
    "hammer-v3",
    "peg-insert-side-v3",
)
ALL_PATCHES = ["touching_object", "_get_quat_objects", "_get_curr_obs_combined_no_goal"]


def _arm(task: str) -> SimArm:
    arm = SimArm(SimArmConfig(task=task))
    arm.connect()
    return arm


@contextmanager
def _connected(task: str) -> Iterator[SimArm]:
    """A connected sim arm, disconnected however the block ends."""
    arm = _arm(task)
    try:
        yield arm
    finally:
        arm.disconnect()


def _trajectory(arm: SimArm, seed: int, steps: int = STEPS) -> dict[str, np.ndarray]:
    """The expert's episode in scene `seed`: everything MetaWorld returns, at full precision, and
    the MuJoCo state after each step."""
    arm.reset_episode(seed)
    env = arm._env.unwrapped
    expert = arm.task.expert()
    # The scene's start: the arm keeps a float32 copy of the state; qpos/qvel are the full one.
    obs = arm.state_vector().astype(np.float64)
    try:
        main_object = env._get_id_main_object()
    except (AttributeError, KeyError):  # some tasks' own lookup fails (`model.geom_name2id`)
        main_object = None
    rows: dict[str, list[Any]] = {"obs": [obs], "qpos": [env.data.qpos.copy()]}
    rows["qvel"] = [env.data.qvel.copy()]
    for _ in range(steps):
        action = np.clip(expert.get_action(obs), -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, _truncated, info = arm._env.step(action)
        rows["obs"].append(obs)
        rows["qpos"].append(env.data.qpos.copy())
        rows["qvel"].append(env.data.qvel.copy())
        rows.setdefault("reward", []).append(reward)
        rows.setdefault("terminated", []).append(terminated)
        for key, value in info.items():
            rows.setdefault(f"info.{key}", []).append(value)
        if main_object is not None:
            # The contact test itself, every step: tasks use it only inside info["grasp_success"],
            # where it is and-ed with other conditions that can hide a difference.
            rows.setdefault("touching", []).append(bool(env.touching_object(main_object)))
    return {key: np.array(values) for key, values in rows.items()}


def _differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """The entries that are not bit-identical (NaN equal to NaN)."""
    assert a.keys() == b.keys()
    differ = []
    for key in a:
        nan_is_nan = a[key].dtype.kind == "f"
        if a[key].dtype != b[key].dtype or not np.array_equal(a[key], b[key], equal_nan=nan_is_nan):
            differ.append(key)
    return differ


def _with_and_without(arm: SimArm, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The same scene with MetaWorld's own methods, then with the patch, in the same env."""
    env = arm._env.unwrapped
    fast_metaworld.unpatch(env)
    assert fast_metaworld.patched(env) == []
    plain = _trajectory(arm, seed)
    assert fast_metaworld.patch(env) == arm.fast_patches
    return plain, _trajectory(arm, seed)


@pytest.mark.parametrize("task", TASKS)
def test_outcomes_are_bit_identical_with_the_patch(task):
    with _connected(task) as arm:
        assert arm.fast_patches, "the sim did not patch its env"
        for seed in SEEDS:
            plain, fast = _with_and_without(arm, seed)
            assert _differences(plain, fast) == [], f"{task} seed {seed}"
        # The experts solve these scenes: the comparison covered contact, grasping and success.
        assert fast["info.success"].any(), task


@pytest.mark.slow  # the other 40 MT50 tasks, one scene each: about 60 s on the 2-core machine
@pytest.mark.parametrize("task", sorted(set(TASK_TABLE) - set(TASKS)))
def test_outcomes_are_bit_identical_with_the_patch_on_every_task(task):
    with _connected(task) as arm:
        plain, fast = _with_and_without(arm, 0)
        assert _differences(plain, fast) == [], task


def test_the_sim_patches_its_env_only():
    with _connected("pick-place-v3") as arm:
        env = arm._env.unwrapped
        plain = type(env).__mro__[1]
        assert arm.fast_patches == ALL_PATCHES == fast_metaworld.patched(env)
        # A subclass of MetaWorld's own task class, which keeps its own code for every other env.
        assert isinstance(env, plain) and type(env).__name__ == plain.__name__ == "SawyerPickPlaceEnvV3"
        for name in ALL_PATCHES:
            assert type(env).__dict__[name] is not getattr(plain, name)
        assert plain.touching_object is SawyerXYZEnv.touching_object
        assert plain._get_quat_objects.__module__ == "metaworld.envs.sawyer_pick_place_v3"
        fast_metaworld.unpatch(env)
        assert type(env) is plain and fast_metaworld.patched(env) == []


def test_a_patched_env_is_freed_without_the_cycle_collector():
    gc.collect()
    gc.disable()
    try:
        arm = _arm("push-v3")
        env = weakref.ref(arm._env.unwrapped)
        arm.disconnect()
        del arm
        assert env() is None, "the patch left a reference cycle: the env's MuJoCo data waits for gc"
    finally:
        gc.enable()


@pytest.fixture
def fresh_patch_caches():
    """`patch` builds each task's subclass and logs each warning once per process: start afresh."""
    fast_metaworld._fast_class.cache_clear()
    fast_metaworld._warn_once.cache_clear()
    yield
    fast_metaworld._fast_class.cache_clear()
    fast_metaworld._warn_once.cache_clear()


def test_no_patch_on_another_metaworld_version(monkeypatch, caplog, fresh_patch_caches):
    monkeypatch.setattr(fast_metaworld, "_version", lambda dist: "3.1.0" if dist == "metaworld" else "1.17.1")
    with caplog.at_level(logging.WARNING, logger=fast_metaworld.__name__), _connected("push-v3") as arm:
        assert arm.fast_patches == []
        assert fast_metaworld.patched(arm._env.unwrapped) == []
        assert type(arm._env.unwrapped).__module__.startswith("metaworld.")
        assert "metaworld 3.1.0 is installed, the patch is written for 3.0.0" in caplog.text
        arm.send_action({"hand_x.vel": 0.1, "hand_y.vel": 0.0, "hand_z.vel": 0.0, "gripper.vel": 0.0})


def test_no_rotation_shortcut_on_another_scipy(monkeypatch, caplog, fresh_patch_caches):
    monkeypatch.setattr(fast_metaworld, "_version", lambda dist: "3.0.0" if dist == "metaworld" else "1.19.0")
    with caplog.at_level(logging.WARNING, logger=fast_metaworld.__name__), _connected("push-v3") as arm:
        assert arm.fast_patches == ["touching_object", "_get_curr_obs_combined_no_goal"]
        assert "scipy 1.19.0 is installed" in caplog.text


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_SIM_FAST", "0")
    with _connected("push-v3") as arm:
        assert arm.fast_patches == []


def _rotations(count: int, seed: int = 0) -> np.ndarray:
    """Rotation matrices as MuJoCo writes them (from unit quaternions, orthogonal to ~1e-16), with
    every branch of the matrix-to-quaternion conversion (largest of the trace and the diagonal)."""
    rng = np.random.default_rng(seed)
    matrices = Rotation.from_quat(rng.normal(size=(count, 4))).as_matrix()
    # Half-turns about x, y, z and the identity pick each branch exactly; near-ties between them.
    special = [[np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi], [0, 0, 0]]
    ties = [[np.pi, np.pi, 0], [0, np.pi, np.pi], [1e-9, 0, np.pi]]
    return np.concatenate([matrices, Rotation.from_rotvec(np.array(special + ties)).as_matrix()])


def test_quaternions_match_scipy_bit_for_bit():
    for matrix in _rotations(3000):
        expected = Rotation.from_matrix(matrix).as_quat()
        assert np.array_equal(_quat_from_matrix(matrix), expected), matrix


def test_quaternions_of_matrices_scipy_repairs_or_refuses():
    rng = np.random.default_rng(1)
    for matrix in _rotations(300, seed=1):
        # Off by more than scipy's tolerance: scipy orthogonalizes (SVD) first; so must this.
        skewed = matrix + rng.normal(scale=1e-6, size=(3, 3))
        assert np.array_equal(_quat_from_matrix(skewed), Rotation.from_matrix(skewed).as_quat())
        # Just inside and just outside this module's own tolerance.
        for scale in (5e-14, 5e-13, 2e-12):
            near = matrix + rng.normal(scale=scale, size=(3, 3))
            assert np.array_equal(_quat_from_matrix(near), Rotation.from_matrix(near).as_quat())
    # A reflection is refused the same way.
    with pytest.raises(ValueError, match="Non-positive determinant"):
        _quat_from_matrix(np.diag([1.0, 1.0, -1.0]))
    nan = np.full((3, 3), np.nan)
    with np.errstate(invalid="ignore"), pytest.raises(Exception) as expected:
        Rotation.from_matrix(nan).as_quat()
    with np.errstate(invalid="ignore"), pytest.raises(expected.type):
        _quat_from_matrix(nan)


# The comparison must be able to fail: wrong patches, bound the way `patch` binds them.


def _broken(arm: SimArm, name: str, func) -> None:
    setattr(arm._env.unwrapped, name, types.MethodType(func, arm._env.unwrapped))


def test_a_contact_test_wrong_in_one_case_is_caught():
    with _connected("pick-place-v3") as arm:
        env = arm._env.unwrapped
        fast_metaworld.unpatch(env)
        plain = _trajectory(arm, 0)
        fast_metaworld.patch(env)

        # A plausible slip: a contact counted only when it lists the pad first and the object second.
        def one_orientation_only(self, object_geom_id):
            contact, pads = self.data.contact, self._flywheel_pads
            on_object = contact.geom2 == object_geom_id
            force, address = self.data.efc_force, contact.efc_address
            left, right = (sum(force[address[on_object & (contact.geom1 == pad)]]) for pad in pads)
            return left > 0 and right > 0

        _broken(arm, "touching_object", one_orientation_only)
        assert _differences(plain, _trajectory(arm, 0)) == ["info.grasp_success", "touching"]


def test_a_patch_wrong_by_one_ulp_is_caught():
    with _connected("push-v3") as arm:
        env = arm._env.unwrapped
        fast_metaworld.unpatch(env)
        plain = _trajectory(arm, 0, steps=20)
        fast_metaworld.patch(env)
        quat = env._get_quat_objects

        def one_ulp_off(self):
            q = quat().copy()
            q[0] = np.nextafter(q[0], np.inf)
            return q

        _broken(arm, "_get_quat_objects", one_ulp_off)
        assert _differences(plain, _trajectory(arm, 0, steps=20)) == ["obs"]
