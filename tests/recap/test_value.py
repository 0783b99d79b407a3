"""The distributional value fits Monte-Carlo returns and ranks episodes by how good they are."""

import numpy as np
import torch

from flywheel.policies.recap_value import RecapValueConfig
from flywheel.policies.recap_value.distributional import bin_centers, expected_value, two_hot
from flywheel.recap.labeling import RewardConfig, rewards_and_returns
from flywheel.recap.source import load_source
from flywheel.recap.train_value import FitSettings, fit, new_value_model, predict
from tests.recap.synth import LENGTH


def test_two_hot_keeps_the_mean():
    returns = torch.tensor([-1.0, -0.333, -0.0051, 0.0])
    target = two_hot(returns, 201)
    assert torch.allclose(target.sum(-1), torch.ones(4))
    assert torch.allclose((target * bin_centers(201)).sum(-1), returns, atol=1e-6)
    assert torch.allclose(expected_value(torch.log(target + 1e-12)), returns, atol=1e-4)


def test_value_loss_falls_and_ranks_fast_above_slow_above_failed(synth_root):
    source = load_source(synth_root)
    _, returns, _ = rewards_and_returns(source, RewardConfig())
    fitted = new_value_model(source, RecapValueConfig(hidden_dim=128, num_layers=2))
    frames = np.arange(len(source.frames))
    fit(fitted, source, returns, frames, FitSettings(steps=400, batch_size=128))
    losses = fitted.losses
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20]), (losses[:3], losses[-3:])

    values = predict(fitted, source, frames, batch_size=512)
    kind_by_length = {length: kind for kind, length in LENGTH.items() if kind != "failed"}
    mean_value = {"fast": [], "slow": [], "failed": []}
    for e, (start, n) in enumerate(zip(source.episodes.start, source.episodes.length, strict=True)):
        kind = kind_by_length[int(n)] if source.episodes.success[e] else "failed"
        mean_value[kind].append(values[start : start + n].mean())
    fast, slow, failed = (np.mean(mean_value[k]) for k in ("fast", "slow", "failed"))
    assert fast > slow > failed, (fast, slow, failed)
    assert np.abs(values - returns).mean() < 0.1


def test_cross_fitting_with_fewer_episodes_than_folds(tmp_path):
    from flywheel.recap.train_value import cross_fit_values
    from tests.recap.synth import Spec, make_dataset

    source = load_source(make_dataset(tmp_path / "two", [Spec("fast"), Spec("slow")]))
    _, returns, _ = rewards_and_returns(source, RewardConfig())
    values, _ = cross_fit_values(source, returns, 5, FitSettings(steps=5, batch_size=16))
    assert np.isfinite(values).all() and len(values) == len(source.frames)
    one = load_source(make_dataset(tmp_path / "one", [Spec("fast")]))
    _, returns, _ = rewards_and_returns(one, RewardConfig())
    values, _ = cross_fit_values(one, returns, 3, FitSettings(steps=5, batch_size=16))
    assert np.isfinite(values).all()
