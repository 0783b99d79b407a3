"""The seed's estimator: Implicit Q-Learning (Kostrikov et al. 2021) for advantages and AWR weights.

    Q_i(s,a) <- r + gamma * (1 - done) * V(s')                 (twin Q, MSE)
    V(s)     <- expectile_tau( min_i Q_target_i(s,a) )         (tau = 0.7: an upper expectile)
    A(s,a)   =  min_i Q_target_i(s,a) - V(s)
    weight   =  min(exp(A / temperature), max_weight)          (AWR)

Rewards are the RECAP ones in raw steps (-1 per step, 0 at a success, -C_fail at a failure),
discounted by `discount`; every episode end is terminal.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from flywheel.policies.pi_star_recap.iql import advantage_weights, expectile_loss, mlp


@dataclass
class IQLSettings:
    expectile: float = 0.7
    temperature: float = 0.5
    discount: float = 0.99
    max_weight: float = 100.0
    steps: int = 3000
    batch_size: int = 256
    q_lr: float = 3e-4
    v_lr: float = 3e-4
    polyak: float = 0.005  # target-Q update rate
    hidden_dim: int = 256
    seed: int = 0


def awr_weights(advantages: np.ndarray, temperature: float, max_weight: float) -> np.ndarray:
    """min(exp(A / temperature), max_weight) per frame: the in-policy critics' formula, on numpy."""
    return advantage_weights(advantages, temperature, max_weight)


class IQL(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.v = mlp(state_dim, hidden)
        self.q1 = mlp(state_dim + action_dim, hidden)
        self.q2 = mlp(state_dim + action_dim, hidden)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)

    def target_q(self, s: Tensor, a: Tensor) -> Tensor:
        sa = torch.cat([s, a], -1)
        return torch.minimum(self.q1_target(sa), self.q2_target(sa)).squeeze(-1)

    def value(self, s: Tensor) -> Tensor:
        return self.v(s).squeeze(-1)


@dataclass
class Transitions:
    state: np.ndarray  # (F, D), normalized
    action: np.ndarray  # (F, A)
    reward: np.ndarray  # (F,)
    next_state: np.ndarray  # (F, D)
    done: np.ndarray  # (F,) 1.0 at the last frame of each episode


def make_transitions(
    state: np.ndarray, action: np.ndarray, rewards: np.ndarray, episode_slices: list[slice]
) -> Transitions:
    mean, std = state.mean(0), state.std(0) + 1e-6
    normalized = ((state - mean) / std).astype(np.float32)
    next_state = normalized.copy()
    done = np.zeros(len(state), dtype=np.float32)
    for rows in episode_slices:
        next_state[rows.start : rows.stop - 1] = normalized[rows.start + 1 : rows.stop]
        done[rows.stop - 1] = 1.0
    return Transitions(normalized, action.astype(np.float32), rewards.astype(np.float32), next_state, done)


def train_iql(data: Transitions, settings: IQLSettings) -> tuple[IQL, list[dict[str, float]]]:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = IQL(data.state.shape[1], data.action.shape[1], settings.hidden_dim)
    q_params = list(model.q1.parameters()) + list(model.q2.parameters())
    q_opt = torch.optim.Adam(q_params, lr=settings.q_lr)
    v_opt = torch.optim.Adam(model.v.parameters(), lr=settings.v_lr)
    tensors = {k: torch.from_numpy(v) for k, v in vars(data).items()}
    history = []
    for _ in tqdm(range(settings.steps), desc="train iql", unit="step", leave=False):
        idx = torch.from_numpy(rng.integers(0, len(data.state), settings.batch_size))
        s, a, r, s2, d = (tensors[k][idx] for k in ("state", "action", "reward", "next_state", "done"))
        # V towards an upper expectile of the target Q
        v_loss = expectile_loss(model.target_q(s, a) - model.value(s), settings.expectile)
        v_opt.zero_grad(set_to_none=True)
        v_loss.backward()
        v_opt.step()
        # twin Q towards the one-step backup through V
        with torch.no_grad():
            backup = r + settings.discount * (1.0 - d) * model.value(s2)
        sa = torch.cat([s, a], -1)
        q_loss = F.mse_loss(model.q1(sa).squeeze(-1), backup) + F.mse_loss(model.q2(sa).squeeze(-1), backup)
        q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        q_opt.step()
        _polyak(model, settings.polyak)
        history.append({"v_loss": v_loss.item(), "q_loss": q_loss.item()})
    return model.eval(), history


@torch.no_grad()
def _polyak(model: IQL, rate: float) -> None:
    for online, target in ((model.q1, model.q1_target), (model.q2, model.q2_target)):
        for p, tp in zip(online.parameters(), target.parameters(), strict=True):
            tp.lerp_(p, rate)


@torch.no_grad()
def iql_advantages(model: IQL, data: Transitions, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(V(s), A(s,a)) for every frame."""
    values, advantages = [], []
    for lo in range(0, len(data.state), batch_size):
        s = torch.from_numpy(data.state[lo : lo + batch_size])
        a = torch.from_numpy(data.action[lo : lo + batch_size])
        v = model.value(s)
        values.append(v.numpy())
        advantages.append((model.target_q(s, a) - v).numpy())
    return np.concatenate(values), np.concatenate(advantages)
