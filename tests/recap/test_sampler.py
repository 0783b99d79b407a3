"""The data-type weighted sampler draws each type as often as configured."""

import numpy as np
import pytest

from flywheel.recap.sampler import DataTypeWeightedSampler, DataTypeWeights, expected_type_shares

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
    draws = np.fromiter(DataTypeWeightedSampler(TYPES, weights, num_samples=40_000, seed=1), dtype=np.int64)
    observed = np.bincount(TYPES[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(observed, expected, atol=0.01)


def test_sampler_reads_a_flywheel_dataset(synth_root):
    from flywheel.recap.sampler import sampler_for_dataset

    sampler = sampler_for_dataset(synth_root, DataTypeWeights(), num_samples=100)
    assert len(list(sampler)) == 100
