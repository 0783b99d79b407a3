"""IQL advantage estimator (the seed's variant), kept beside RECAP so both run on the same data.

Small MLP critics over the normalized state (V) and state + first action (twin Q), trained with
IQL's losses; the policy's flow-matching loss is weighted per sample by clip(exp(A / temperature)).
The critics read the state, not the VLM prefix: a critic that shared the prefix would pull the VLM
towards value regression and would see the advantage indicator text it is meant to produce.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, hidden: int, out_dim: int = 1) -> nn.Sequential:
    """The critics' MLP (two GELU hidden layers); flywheel.recap.iql builds its critics with it too."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
    )


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric L2 on diff = target - prediction (IQL eq. 5): under-predictions cost `expectile`,
    over-predictions 1 - expectile, so V is pushed above the mean of Q when expectile > 0.5."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean()


class IQLHeads(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.v_head = mlp(state_dim, hidden)
        self.q_heads = nn.ModuleList([mlp(state_dim + action_dim, hidden) for _ in range(2)])
        # Target Qs move only through update() (Polyak), never through the optimizer.
        self.q_target = copy.deepcopy(self.q_heads).requires_grad_(False)

    def v(self, state: Tensor) -> Tensor:
        return self.v_head(state).squeeze(-1)

    def q_min(self, heads: nn.ModuleList, state: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([state, action], dim=-1)
        return torch.minimum(heads[0](x), heads[1](x)).squeeze(-1)

    def losses(
        self,
        state: Tensor,
        action: Tensor,
        reward: Tensor,
        done: Tensor,
        next_state: Tensor,
        expectile: float,
        discount: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """v_loss, q_loss and the advantage A = min(Q_target) - V (detached) per sample."""
        with torch.no_grad():
            q_target = self.q_min(self.q_target, state, action)
            td_target = reward + discount * (1.0 - done) * self.v(next_state)
        v = self.v(state)
        v_loss = expectile_loss(q_target - v, expectile)
        x = torch.cat([state, action], dim=-1)
        q_loss = sum(F.mse_loss(q(x).squeeze(-1), td_target) for q in self.q_heads)
        return v_loss, q_loss, (q_target - v).detach()

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        for target, online in zip(self.q_target.parameters(), self.q_heads.parameters(), strict=True):
            target.lerp_(online, tau)


def advantage_weights(
    advantage: Tensor | np.ndarray, temperature: float, max_weight: float
) -> Tensor | np.ndarray:
    """AWR weights min(exp(A / temperature), max_weight), so one sample cannot dominate the batch.

    Tensors (the in-policy critics) or numpy arrays (flywheel.recap.iql.awr_weights). numpy caps the
    exponent at log(max_weight) before exp, so a huge advantage gives max_weight (to rounding), never
    an overflow; torch caps the weight. Each is the estimator's formula to the bit.
    """
    exponent = advantage / temperature
    if isinstance(exponent, Tensor):
        return torch.exp(exponent).clamp(max=max_weight)
    return np.exp(np.minimum(exponent, np.log(max_weight)))
