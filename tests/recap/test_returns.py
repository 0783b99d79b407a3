import numpy as np

from flywheel.recap.returns import episode_rewards, normalize, nstep_reward_sum, reward_to_go


def test_rewards_follow_the_paper():
    assert episode_rewards(4, True, 10.0).tolist() == [-1, -1, -1, 0]
    assert episode_rewards(3, False, 10.0).tolist() == [-1, -1, -10]


def test_returns_are_normalized_into_minus_one_zero():
    togo = reward_to_go(episode_rewards(5, True, 0.0))
    assert togo.tolist() == [-4, -3, -2, -1, 0]
    assert normalize(togo, 10).tolist() == [-0.4, -0.3, -0.2, -0.1, 0.0]
    assert normalize(reward_to_go(episode_rewards(5, False, 100.0)), 10).min() == -1.0


def test_nstep_sum_truncates_at_the_episode_end():
    r = episode_rewards(5, True, 0.0)
    assert nstep_reward_sum(r, 2).tolist() == [-2, -2, -2, -1, 0]
    np.testing.assert_allclose(nstep_reward_sum(r, 100), reward_to_go(r))
