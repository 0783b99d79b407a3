"""The seed's IQL estimator: expectile regression, AWR weights, and labels on a dataset (its
critics' MLP, expectile loss and weight formula are the in-policy critics', pi_star_recap/iql.py)."""

import numpy as np
import torch

from flywheel.policies.pi_star_recap.iql import IQLHeads, advantage_weights, expectile_loss
from flywheel.recap.iql import IQL, awr_weights
from tests.recap.conftest import label_config


def test_expectile_above_the_mean():
    q = torch.randn(2000) + 3.0
    v = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([v], lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        expectile_loss(q - v, 0.7).backward()
        optimizer.step()
    assert v.item() > q.mean().item() + 0.2
    # symmetric at 0.5: the mean
    assert torch.isclose(expectile_loss(torch.tensor([1.0, -1.0]), 0.5), torch.tensor(0.5))


def test_awr_weights_are_finite_and_clipped():
    advantages = np.array([-1e9, -3.0, 0.0, 1.0, 50.0, 1e9])
    weights = awr_weights(advantages, temperature=0.5, max_weight=100.0)
    assert np.isfinite(weights).all()
    assert weights.max() <= 100.0 + 1e-9 and weights.min() >= 0.0
    assert weights[2] == 1.0 and np.isclose(weights[3], np.exp(2.0))


def test_awr_weights_on_numpy_and_on_tensors_are_one_formula():
    advantages = np.array([-3.0, 0.0, 1.0, 2.0, 50.0])
    on_numpy = awr_weights(advantages, temperature=0.5, max_weight=100.0)
    on_tensors = advantage_weights(torch.from_numpy(advantages), temperature=0.5, max_weight=100.0)
    assert np.allclose(on_numpy, on_tensors.numpy(), rtol=1e-12)


def test_both_critics_are_built_alike():
    """Same seed, same layers in the same order: the same initial V and twin Q."""
    torch.manual_seed(0)
    seed_iql = IQL(5, 2, 16)
    torch.manual_seed(0)
    heads = IQLHeads(5, 2, 16)
    pairs = ((seed_iql.v, heads.v_head), (seed_iql.q1, heads.q_heads[0]), (seed_iql.q2, heads.q_heads[1]))
    for a, b in pairs:
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)


def test_iql_labels_a_dataset(synth_root, tmp_path):
    from flywheel.recap.labeling import run_labeling

    cfg = label_config(
        synth_root, tmp_path / "iql", advantage={"estimator": "iql"}, threshold={"mode": "global"}
    )
    labels = run_labeling(cfg)
    assert np.isfinite(labels.advantages).all()
    free = ~labels.forced
    assert abs(labels.positive[free].mean() - 0.3) < 0.02
    assert labels.positive[labels.forced].all()
