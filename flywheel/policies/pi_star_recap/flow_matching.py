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


def rtc_guide(processor, prev_chunk_left_over: Tensor, inference_delay: int, execution_horizon: int | None):
    """Real-time chunking's guidance as a denoising-loop hook (network.Guide): every step's velocity
    goes through LeRobot's RTCProcessor.denoise_step, which pulls the predicted clean chunk
    x_t - t * v toward `prev_chunk_left_over` under its prefix weights (1 on the first
    `inference_delay` actions, decaying linearly to 0 at `execution_horizon`), with openpi's
    clipped guidance weight min(beta, (t / (1 - t)) * ((t^2 + (1 - t)^2) / t^2)).

    The model's velocity is computed without autograd: RTCProcessor computes it before it sets
    requires_grad on x_t, so its correction is the weighted error itself (the denoiser's Jacobian is
    not taken, unlike the paper's vector-Jacobian product), and a graph through the network would
    only cost time and memory."""

    def base(velocity):
        def no_grad_velocity(x: Tensor) -> Tensor:
            with torch.no_grad():
                return velocity(x)

        return no_grad_velocity

    def guide(x_t: Tensor, time: float, velocity) -> Tensor:
        return processor.denoise_step(
            x_t=x_t,
            prev_chunk_left_over=prev_chunk_left_over,
            inference_delay=inference_delay,
            time=time,
            original_denoise_step_partial=base(velocity),
            execution_horizon=execution_horizon,
        )

    return guide
