"""Flow-matching helpers (openpi conventions: t=1 is noise, t=0 is data; Euler from 1 to 0)."""

import math

import torch
from torch import Tensor


def sinusoidal_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """openpi's timestep embedding: sin/cos at periods spaced geometrically in [min, max].

    t of any shape -> [*t.shape, dim]."""
    if dim % 2:
        raise ValueError("embedding dimension must be even")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period) * t.double()[..., None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).float()


def sample_time(batch: int, alpha: float, beta: float, scale: float, offset: float, device) -> Tensor:
    """Beta(alpha, beta)-distributed times squeezed into (offset, offset + scale), as pi0.5."""
    dist = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(beta))
    return (dist.sample((batch,)) * scale + offset).to(device)


def noisy_actions(actions: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """x_t on the straight path between data and noise, and the velocity target u = noise - actions."""
    tt = t[:, None, None]
    return tt * noise + (1 - tt) * actions, noise - actions
