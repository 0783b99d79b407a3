"""RECAP core: rewards and returns, the distributional value function, advantage labels, the IQL
estimator and the data-type weighted sampler (docs/recap.md)."""
