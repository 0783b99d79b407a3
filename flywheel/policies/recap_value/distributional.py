"""The categorical return distribution: 201 bins over the normalized return in [-1, 0]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bin_centers(num_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Evenly spaced support from -1 (worst) to 0 (success at once)."""
    return torch.linspace(-1.0, 0.0, num_bins, device=device)


def two_hot(returns: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Target distribution that puts the return's mass on its two neighbouring bins, so the
    distribution's mean is the return itself (plain one-hot would round it to a bin)."""
    position = (returns.clamp(-1.0, 0.0) + 1.0) * (num_bins - 1)
    low = position.floor().long().clamp(0, num_bins - 1)
    high = (low + 1).clamp(max=num_bins - 1)
    upper_weight = position - low.float()
    target = torch.zeros(*returns.shape, num_bins, device=returns.device)
    target.scatter_add_(-1, low.unsqueeze(-1), (1.0 - upper_weight).unsqueeze(-1))
    target.scatter_add_(-1, high.unsqueeze(-1), upper_weight.unsqueeze(-1))
    return target


def cross_entropy(logits: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy between predicted bins and the two-hot Monte-Carlo return."""
    target = two_hot(returns, logits.shape[-1])
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def expected_value(logits: torch.Tensor) -> torch.Tensor:
    """V(o) = E[return] under the predicted distribution."""
    centers = bin_centers(logits.shape[-1], logits.device)
    return (F.softmax(logits.float(), dim=-1) * centers).sum(-1)
