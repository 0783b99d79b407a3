"""The simulated arm (robots/sim), the simulated operator and the simulated pedal (teleop/)."""

from __future__ import annotations

import gc
import logging
import math

import numpy as np
import pytest
from gymnasium.utils import seeding

from flywheel.contracts.messages import Observation
from robots.sim import LOCAL_SIMS, SimArm, SimArmConfig
from robots.sim.tasks import ACTION_NAMES, STATE_NAMES, get_task
from teleop.pedals import SimPedal, SimPedalConfig
from teleop.sim_operator import SimOperator, SimOperatorConfig

PUSH = get_task("push-v3")


@pytest.fixture(scope="module")
def arm():
    """One connected push-v3 arm for the module (connecting builds a MuJoCo scene)."""
    gc.collect()  # drop sims other tests left behind, so a local operator watches this one
    sim = SimArm(SimArmConfig(task="push-v3"))
    sim.connect()
    yield sim
    sim.disconnect()


def _scene(arm: SimArm, seed: int) -> np.ndarray:
    """reset_episode(seed), made reproducible: reseed the RNG MetaWorld draws the task from first.

    Works around the bug shown by test_reset_episode_is_deterministic, so the operator tests below
    see the same scene for the same seed whatever ran before them."""
    arm._env.unwrapped.np_random, _ = seeding.np_random(seed)
    arm.reset_episode(seed)
    return arm.state_vector()


# --------------------------------------------------------------------------------------------------
# SimArm


def test_arm_connects_with_state_features(arm):
    assert arm.is_connected
    assert arm.is_calibrated
    features = arm.observation_features
    assert len(features) == 39
    assert list(features) == list(STATE_NAMES)
    assert all(kind is float for kind in features.values())
    assert len(set(STATE_NAMES)) == 39
    assert STATE_NAMES[:4] == ("hand_x.pos", "hand_y.pos", "hand_z.pos", "gripper_open.pos")
    assert STATE_NAMES[-3:] == ("goal_x.pos", "goal_y.pos", "goal_z.pos")


def test_arm_action_features(arm):
    assert arm.action_features == dict.fromkeys(ACTION_NAMES, float)
    assert len(arm.action_features) == 4


def test_observation_matches_the_features(arm):
    arm.reset_episode(0)
    obs = arm.get_observation()
    assert list(obs) == list(STATE_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in obs.values())
    np.testing.assert_allclose([obs[n] for n in STATE_NAMES], arm.state_vector(), rtol=0, atol=0)


def test_connecting_twice_is_refused(arm):
    with pytest.raises(RuntimeError, match="already connected"):
        arm.connect()


def test_send_action_clips_to_unit_range(arm):
    arm.reset_episode(0)
    sent = arm.send_action({"hand_x.vel": 5.0, "hand_y.vel": -7.5, "hand_z.vel": 0.25, "gripper.vel": 1.0001})
    assert sent == {"hand_x.vel": 1.0, "hand_y.vel": -1.0, "hand_z.vel": 0.25, "gripper.vel": 1.0}
    assert arm.steps == 1


def test_send_action_moves_the_hand(arm):
    arm.reset_episode(0)
    before = arm.state_vector()[:3]
    for _ in range(5):
        arm.send_action({"hand_x.vel": 0.0, "hand_y.vel": 0.0, "hand_z.vel": 1.0, "gripper.vel": 0.0})
    after = arm.state_vector()[:3]
    assert after[2] > before[2] + 0.01  # up


def test_send_action_rejects_a_missing_key(arm):
    arm.reset_episode(0)
    with pytest.raises(ValueError, match=r"'gripper\.vel'"):
        arm.send_action({"hand_x.vel": 0.0, "hand_y.vel": 0.0, "hand_z.vel": 0.0})
    assert arm.steps == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_send_action_rejects_non_finite_values(arm, bad):
    arm.reset_episode(0)
    before = arm.state_vector()
    with pytest.raises(ValueError, match="non-finite") as info:
        arm.send_action({"hand_x.vel": 0.0, "hand_y.vel": bad, "hand_z.vel": 0.0, "gripper.vel": 0.0})
    assert str(bad) in str(info.value)  # the values are in the message
    assert arm.steps == 0
    np.testing.assert_array_equal(arm.state_vector(), before)


def test_reset_episode_is_deterministic(arm):
    arm.reset_episode(3)
    first = arm.state_vector()
    scenes = []
    for _ in range(4):
        for _ in range(3):
            arm.send_action(dict.fromkeys(ACTION_NAMES, 0.5))
        arm.reset_episode(3)
        scenes.append(arm.state_vector())
    assert arm.steps == 0
    assert arm.episode_seed == 3
    for scene in scenes:
        np.testing.assert_array_equal(scene, first)


def test_reset_episode_restores_the_hand_and_clears_success(arm):
    # What reset does get right today: the arm's own start pose, step count and success flag.
    arm.reset_episode(3)
    first = arm.state_vector()
    for _ in range(10):
        arm.send_action(dict.fromkeys(ACTION_NAMES, 0.5))
    assert not np.array_equal(arm.state_vector()[:4], first[:4])
    arm.reset_episode(3)
    np.testing.assert_array_equal(arm.state_vector()[:4], first[:4])
    assert arm.steps == 0
    assert arm.episode_seed == 3
    assert not arm.task_success()


def test_fresh_arms_with_the_same_seed_start_in_the_same_scene(arm):
    other = SimArm(SimArmConfig(task="push-v3", seed=arm.config.seed, id="test-fresh"))
    twin = SimArm(SimArmConfig(task="push-v3", seed=arm.config.seed, id="test-twin"))
    try:
        other.connect()
        twin.connect()
        np.testing.assert_array_equal(other.state_vector(), twin.state_vector())
    finally:
        other.disconnect()
        twin.disconnect()
        del other, twin
        gc.collect()


def test_seeded_scenes_are_reproducible_and_differ_by_seed(arm):
    # With the scene RNG reseeded (the workaround _scene uses), the seed decides the scene.
    a, b = _scene(arm, 0), _scene(arm, 1)
    assert not np.array_equal(a, b)
    arm.send_action(dict.fromkeys(ACTION_NAMES, 0.5))
    np.testing.assert_array_equal(_scene(arm, 0), a)


def test_reset_without_seed_takes_the_next_one(arm):
    arm.reset_episode(5)
    arm.reset_episode()
    assert arm.episode_seed == 6


def test_arm_lists_its_camera_like_a_real_arm():
    # Stock lerobot-record sizes its image writer by len(robot.cameras); it failed without them.
    assert SimArm(SimArmConfig()).cameras == {}
    sim = SimArm(SimArmConfig(camera=True, camera_width=32, camera_height=24, id="test-camera"))
    assert list(sim.cameras) == ["front"]
    assert sim.observation_features["front"] == (24, 32, 3)
    sim.connect()
    try:
        np.testing.assert_array_equal(sim.cameras["front"].read(), sim.get_observation()["front"])
        assert sim.cameras["front"].read().shape == (24, 32, 3)
    finally:
        sim.disconnect()


def _fresh(name: str, **config) -> SimArm:
    """A connected push-v3 arm of its own (LOCAL_SIMS holds one sim per id)."""
    sim = SimArm(SimArmConfig(task="push-v3", id=f"test-{name}", **config))
    sim.connect()
    return sim


def _step(sim: SimArm, n: int) -> None:
    for _ in range(n):
        sim.send_action(dict.fromkeys(ACTION_NAMES, 0.1))


def test_left_alone_the_arm_moves_on_after_scene_steps():
    # Stock lerobot-teleoperate sets up no episodes: the sim ends a scene where MetaWorld would.
    sim = _fresh("sim", seed=4, scene_steps=5)
    twin = _fresh("twin", seed=4, episode=1, scene_steps=5)
    try:
        scene = sim.scene
        _step(sim, 4)
        assert (sim.episode_seed, sim.steps) == (4, 4)
        _step(sim, 1)
        assert (sim.episode_seed, sim.steps, sim.scene) == (5, 0, scene + 1)
        np.testing.assert_array_equal(sim.state_vector(), twin.state_vector())  # episode 1's scene
    finally:
        sim.disconnect()
        twin.disconnect()


def test_left_alone_the_arm_runs_past_metaworlds_step_budget():
    sim = _fresh("sim")
    try:
        _step(sim, 501)  # MetaWorld raised "You must reset the env manually" on step 501
        assert (sim.episode_seed, sim.steps) == (1, 1)
    finally:
        sim.disconnect()


def test_a_caller_that_resets_owns_the_scene_however_long_it_runs(arm):
    # The rollout daemon (and lerobot-eval's env) reset each episode: the scene never changes under them.
    arm.reset_episode(3)
    _step(arm, 600)
    assert (arm.episode_seed, arm.steps) == (3, 600)


def test_recording_announcement_sets_up_the_episodes_scene(caplog):
    from lerobot.utils.utils import log_say

    caplog.set_level(logging.INFO)  # stock tools log at INFO; pytest's root logger is at WARNING
    sim = _fresh("sim", seed=10, scene_steps=5)
    twin = _fresh("twin", seed=10, episode=2)
    try:
        _step(sim, 3)
        logging.getLogger().info("Recording episode 2")  # the same words, but not from log_say
        assert (sim.episode_seed, sim.steps) == (10, 3)
        log_say("Recording episode 2", play_sounds=False)  # what lerobot-record says before episode 2
        assert (sim.episode_seed, sim.steps) == (12, 0)
        np.testing.assert_array_equal(sim.state_vector(), twin.state_vector())
        _step(sim, 20)  # the recorder's episode, not scene_steps, decides when the scene ends
        assert (sim.episode_seed, sim.steps) == (12, 20)
        scene = sim.scene
        log_say("Recording episode 2", play_sounds=False)  # a re-recorded episode: the same scene, afresh
        assert (sim.episode_seed, sim.steps, sim.scene) == (12, 0, scene + 1)
        np.testing.assert_array_equal(sim.state_vector(), twin.state_vector())
    finally:
        sim.disconnect()
        twin.disconnect()


def test_replay_announcement_keeps_the_connect_scene(caplog):
    from lerobot.utils.utils import log_say

    caplog.set_level(logging.INFO)
    sim = _fresh("sim", seed=10, episode=2, scene_steps=5)
    try:
        before = sim.state_vector()
        log_say("Replaying episode", play_sounds=False)
        np.testing.assert_array_equal(sim.state_vector(), before)
        _step(sim, 20)  # a replayed episode is never cut into scenes
        assert (sim.episode_seed, sim.steps) == (12, 20)
    finally:
        sim.disconnect()


def test_not_connected_arm_refuses_io():
    sim = SimArm(SimArmConfig())
    assert not sim.is_connected
    with pytest.raises(RuntimeError, match="not connected"):
        sim.get_observation()
    with pytest.raises(RuntimeError, match="not connected"):
        sim.send_action(dict.fromkeys(ACTION_NAMES, 0.0))


# --------------------------------------------------------------------------------------------------
# SimOperator


def _run_operator(arm, skill: str, seed: int, steps: int = 150) -> int | None:
    """Let a local operator drive the arm in scene `seed`; returns the step it succeeded at, or None."""
    assert next(iter(LOCAL_SIMS.values())) is arm
    _scene(arm, seed)
    operator = SimOperator(SimOperatorConfig(skill=skill, observation_source="local", seed=seed))
    operator.connect()
    try:
        for step in range(steps):
            action = operator.get_action()
            assert set(action) == set(ACTION_NAMES)
            assert all(-1.0 <= v <= 1.0 for v in action.values())
            arm.send_action(action)
            if arm.task_success():
                return step
        return None
    finally:
        operator.disconnect()


def test_good_operator_solves_push(arm):
    solved_at = _run_operator(arm, "good", seed=0)
    assert solved_at is not None
    assert solved_at < 150
    assert PUSH.progress_distance(arm.state_vector()) < 0.15


HORIZON = 100
SEEDS = range(4)


@pytest.fixture(scope="module")
def good_steps(arm) -> list[int]:
    """Steps the good operator needs per seed (HORIZON when it does not succeed)."""
    return [_run_operator(arm, "good", s, HORIZON) or HORIZON for s in SEEDS]


@pytest.mark.parametrize("skill", ["noisy", "burst"])
def test_flawed_operators_do_worse_than_good(arm, good_steps, skill):
    flawed_steps = [_run_operator(arm, skill, s, HORIZON) or HORIZON for s in SEEDS]
    assert good_steps.count(HORIZON) == 0, good_steps  # the good operator solves every scene
    assert flawed_steps.count(HORIZON) >= 1, flawed_steps  # the flawed one fails at least one
    assert np.mean(flawed_steps) > np.mean(good_steps) + 10, (good_steps, flawed_steps)


def test_operator_keeps_still_before_it_sees_the_scene():
    operator = SimOperator(SimOperatorConfig(skill="good", observation_source="daemon"))
    assert operator.get_action() == dict.fromkeys(ACTION_NAMES, 0.0)


def test_operator_acts_on_observations_it_is_given(arm):
    arm.reset_episode(0)
    operator = SimOperator(SimOperatorConfig(skill="good", noise_std=0.0, reaction_delay_frames=0))
    view = Observation(0, 0, PUSH.instruction, STATE_NAMES, arm.state_vector(), "push-v3")
    operator.observe(view)
    action = np.array([operator.get_action()[n] for n in ACTION_NAMES])
    expert = np.clip(PUSH.expert().get_action(arm.state_vector()), -1, 1)
    np.testing.assert_allclose(action, expert, atol=1e-6)


def test_local_operator_without_a_sim_fails_clearly(monkeypatch):
    import teleop.sim_operator.sim_operator as module

    monkeypatch.setattr(module, "LOCAL_SIMS", {})
    operator = SimOperator(SimOperatorConfig(observation_source="local"))
    with pytest.raises(RuntimeError, match="observation_source=local"):
        operator.get_action()


def test_disconnected_arm_leaves_local_sims():
    sim = SimArm(SimArmConfig(id="test-disconnect"))
    sim.connect()
    try:
        assert LOCAL_SIMS.get("test-disconnect") is sim
    finally:
        sim.disconnect()
    assert "test-disconnect" not in LOCAL_SIMS


# --------------------------------------------------------------------------------------------------
# SimPedal, fed synthetic observations

OBJ = np.array([0.0, 0.6, 0.02])
GOAL = np.array([0.1, 0.8, 0.02])
OBJ_TO_GOAL = float(np.linalg.norm(GOAL - OBJ))


def _view(frame: int, distance: float, episode: int = 0) -> Observation:
    """A push-v3 observation whose progress distance is `distance` (the hand is off the puck in x)."""
    offset = distance - OBJ_TO_GOAL
    assert offset >= 0
    state = np.zeros(39, dtype=np.float32)
    state[0:3] = OBJ + np.array([offset, 0.0, 0.0])
    state[4:7] = OBJ
    state[36:39] = GOAL
    return Observation(episode, frame, PUSH.instruction, STATE_NAMES, state, "push-v3")


def test_view_helper_sets_the_progress_distance():
    assert PUSH.progress_distance(_view(0, 0.5).state) == pytest.approx(0.5, abs=1e-6)


def _pedal(**overrides) -> SimPedal:
    config = {"press_probability": 1.0, "window": 5, "grace_frames": 30, "min_hold_frames": 10}
    config.update(overrides)
    return SimPedal(SimPedalConfig(**config))


def _drifting(frame: int) -> float:
    return OBJ_TO_GOAL + 0.01 * frame  # the hand moves away from the puck 1 cm per frame


def test_pedal_presses_on_drift_only_after_grace_frames():
    pedal = _pedal()
    pressed = [pedal.read(_view(f, _drifting(f))).pressed for f in range(40)]
    assert pressed.index(True) == 30  # the drift is there from frame 5 on
    assert all(pressed[30:])


def test_pedal_press_needs_a_full_window_of_history():
    pedal = _pedal(grace_frames=0, window=5)
    pressed = [pedal.read(_view(f, _drifting(f))).pressed for f in range(10)]
    assert pressed.index(True) == 5


def test_pedal_releases_after_recovery_and_min_hold():
    pedal = _pedal(recover_fraction=0.5, min_hold_frames=10, max_hold_frames=1000)
    for f in range(31):
        reading = pedal.read(_view(f, _drifting(f)))
    assert reading.pressed  # pressed at frame 30, at distance d
    d = _drifting(30)
    # Recovered at once (below half the distance at the press), but held for min_hold_frames.
    back = [pedal.read(_view(f, OBJ_TO_GOAL)).pressed for f in range(31, 45)]
    assert 0.5 * d >= OBJ_TO_GOAL
    assert back.index(False) == 40 - 31
    assert all(back[: 40 - 31])


def test_pedal_holds_until_the_distance_recovers_by_the_fraction():
    pedal = _pedal(recover_fraction=0.5, min_hold_frames=10, max_hold_frames=1000)
    for f in range(31):
        pedal.read(_view(f, _drifting(f)))
    d = _drifting(30)
    # Only 20 % recovered: still pressed long after min_hold_frames.
    partial = [pedal.read(_view(f, 0.8 * d)).pressed for f in range(31, 100)]
    assert all(partial)
    # 55 % recovered: released on that frame.
    assert not pedal.read(_view(100, 0.45 * d)).pressed


def test_pedal_releases_after_max_hold_frames():
    pedal = _pedal(min_hold_frames=10, max_hold_frames=25)
    for f in range(31):
        pedal.read(_view(f, _drifting(f)))
    held = [pedal.read(_view(f, _drifting(30))).pressed for f in range(31, 60)]
    assert held.index(False) == 55 - 31


def test_pedal_cooldown_after_release():
    pedal = _pedal(min_hold_frames=10, max_hold_frames=1000, cooldown_frames=20, rule="drift")
    for f in range(31):
        pedal.read(_view(f, _drifting(f)))
    for f in range(31, 41):
        pedal.read(_view(f, OBJ_TO_GOAL))
    assert not pedal.read(_view(41, OBJ_TO_GOAL)).pressed
    # Drifting again at once: no press before 20 frames after the release at frame 40.
    pressed = [pedal.read(_view(f, OBJ_TO_GOAL + 0.01 * (f - 41))).pressed for f in range(42, 70)]
    assert pressed.index(True) + 42 == 60


def test_pedal_never_presses_while_progress_is_steady():
    pedal = _pedal(grace_frames=0)
    # The distance falls 5 mm per frame: progress, neither stuck nor drifting.
    readings = [pedal.read(_view(f, 0.7 - 0.005 * f)).pressed for f in range(90)]
    assert not any(readings)


def test_pedal_stuck_rule_presses_when_distance_does_not_fall():
    pedal = _pedal(grace_frames=0, rule="stuck")
    readings = [pedal.read(_view(f, 0.5)).pressed for f in range(10)]
    assert readings.index(True) == 5


def test_pedal_drift_rule_ignores_a_stall():
    pedal = _pedal(grace_frames=0, rule="drift")
    assert not any(pedal.read(_view(f, 0.5)).pressed for f in range(60))


def test_pedal_with_zero_probability_never_presses():
    pedal = _pedal(grace_frames=0, press_probability=0.0)
    assert not any(pedal.read(_view(f, _drifting(f))).pressed for f in range(60))


def test_pedal_judges_each_frame_once():
    pedal = _pedal(grace_frames=0, window=5)
    for f in range(5):
        for _ in range(10):  # read far faster than frames arrive
            assert not pedal.read(_view(f, _drifting(f))).pressed
    assert pedal.read(_view(5, _drifting(5))).pressed


def test_pedal_resets_on_a_new_episode():
    pedal = _pedal(grace_frames=0, window=5, max_hold_frames=1000)
    for f in range(6):
        pedal.read(_view(f, _drifting(f)))
    assert pedal.read(_view(6, _drifting(6))).pressed
    assert not pedal.read(_view(0, 0.5, episode=1)).pressed


def test_pedal_without_a_view_is_up():
    assert not _pedal().read(None).pressed


# --------------------------------------------------------------------------------------------------
# invalid configurations


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SimPedalConfig(rule="sometimes"), "pedal.rule"),
        (lambda: SimPedalConfig(press_probability=1.5), "pedal.press_probability"),
        (lambda: SimPedalConfig(press_probability=-0.1), "pedal.press_probability"),
        (lambda: SimPedalConfig(window=1), "pedal.window"),
        (lambda: SimOperatorConfig(skill="clumsy"), "teleop.skill"),
        (lambda: SimOperatorConfig(noise_std=-1.0), "teleop.noise_std"),
        (lambda: SimOperatorConfig(reaction_delay_frames=-1), "teleop.reaction_delay_frames"),
        (lambda: SimOperatorConfig(observation_source="webcam"), "teleop.observation_source"),
        (lambda: SimArmConfig(task="fold-laundry-v1"), "robot.task"),
        (lambda: SimArmConfig(scene_steps=0), "robot.scene_steps"),
        (lambda: SimArmConfig(episode=-1), "robot.episode"),
        (lambda: SimArmConfig(camera_width=8), "robot.camera_width"),
        (lambda: SimArmConfig(camera_height=1000), "robot.camera_height"),
    ],
)
def test_invalid_config_names_the_field(make, field):
    with pytest.raises(ValueError, match=rf"^{field.replace('.', chr(92) + '.')}: "):
        make()


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError, match="push-v3") as info:
        get_task("nope", field="robot.task")
    assert "'nope'" in str(info.value)
