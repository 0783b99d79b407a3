"""The data-type weights draw each type as often as configured, through the trainer's sampler."""

import numpy as np
import pytest
import torch

from flywheel.recap.sampler import DataTypeWeights, expected_type_shares, frame_weights
from trainer.train_policy import weighted_sampler

TYPES = np.array([0] * 600 + [1] * 300 + [2] * 100)


@pytest.mark.parametrize("balance", [True, False])
def test_empirical_type_frequencies_match_the_weights(balance):
    weights = DataTypeWeights(
        demo_weight=1.0, auto_weight=0.5, intervention_weight=2.0, balance_data_types=balance
    )
    expected = expected_type_shares(TYPES, weights)
    if balance:
        np.testing.assert_allclose(expected, np.array([1.0, 0.5, 2.0]) / 3.5)
    else:
        np.testing.assert_allclose(expected, np.array([600, 150, 200]) / 950)
    torch.manual_seed(1)
    sampler = weighted_sampler(frame_weights(TYPES, weights), len(TYPES))
    draws = np.concatenate([np.fromiter(sampler, dtype=np.int64) for _ in range(40)])  # 40 epochs
    observed = np.bincount(TYPES[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(observed, expected, atol=0.01)


def test_weights_of_a_flywheel_dataset(synth_root):
    from flywheel.recap.source import load_source

    types = load_source(synth_root).frame_data_type_ids()
    sampler = weighted_sampler(frame_weights(types, DataTypeWeights()), len(types))
    assert len(list(sampler)) == len(types)
    with pytest.raises(ValueError, match="weights for"):
        weighted_sampler(frame_weights(types, DataTypeWeights()), len(types) + 1)
