"""The pi_star_recap network: prefix embedding, flow-matching loss, and (guided) Euler sampling.

Parameter names follow LeRobot's PI05Pytorch (paligemma_with_expert, action_in_proj, action_out_proj,
time_mlp_in, time_mlp_out) so pi05_base loads by a prefix change. Modules pi05_base lacks are optional:
`state_token_proj` (continuous_state_token) and `iql` (advantage_estimator="iql").
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flywheel.policies.pi_star_recap.backbone import PaliGemmaWithExpert
from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig
from flywheel.policies.pi_star_recap.cuda_graphs import CudaGraphCache
from flywheel.policies.pi_star_recap.flow_matching import noisy_actions, sample_time, sinusoidal_embedding
from flywheel.policies.pi_star_recap.iql import IQLHeads
from flywheel.policies.pi_star_recap.layers import KV


@dataclass
class PrefixInputs:
    """Everything the prefix sees. The context (images, state token, task and state text) has B rows;
    the suffix (indicator and "Action: ") has repeat * B rows: 2B under CFG, positive rows first. The
    context is embedded and encoded once and its keys and values reused by every suffix row."""

    images: list[Tensor]  # each [B, 3, S, S] in [-1, 1]
    image_masks: list[Tensor]  # each [B] bool: False for a camera absent from the batch
    context_tokens: Tensor  # [B, Lc] prompt ids
    context_mask: Tensor  # [B, Lc] bool
    suffix_tokens: Tensor  # [repeat * B, Ls] prompt ids
    suffix_mask: Tensor  # [repeat * B, Ls] bool
    state: Tensor  # [B, state_dim] normalized, for the continuous state token
    repeat: int = 1

    def tensors(self) -> list[Tensor]:
        return [
            *self.images,
            *self.image_masks,
            self.context_tokens,
            self.context_mask,
            self.suffix_tokens,
            self.suffix_mask,
            self.state,
        ]

    def with_tensors(self, tensors: list[Tensor]) -> "PrefixInputs":
        """The same inputs made of `tensors` (in the order of tensors())."""
        n = len(self.images)
        images, masks, rest = tensors[:n], tensors[n : 2 * n], tensors[2 * n :]
        return PrefixInputs(list(images), list(masks), *rest, repeat=self.repeat)


class PiStarRECAPNetwork(nn.Module):
    def __init__(self, cfg: PiStarRECAPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.paligemma_with_expert = PaliGemmaWithExpert(cfg)
        width = cfg.expert_width
        self.action_in_proj = nn.Linear(cfg.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, cfg.max_action_dim)
        self.time_mlp_in = nn.Linear(width, width)
        self.time_mlp_out = nn.Linear(width, width)
        if cfg.continuous_state_token:
            self.state_token_proj = nn.Sequential(
                nn.Linear(cfg.state_dim, cfg.vlm_width), nn.SiLU(), nn.Linear(cfg.vlm_width, cfg.vlm_width)
            )
        if cfg.advantage_estimator == "iql":
            self.iql = IQLHeads(cfg.state_dim, cfg.action_dim, cfg.iql_hidden_dim)
        self.sample_graphs = CudaGraphCache()

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.paligemma_with_expert.language_model.embed_tokens.weight.dtype

    def embed_context(self, inp: PrefixInputs) -> tuple[Tensor, Tensor]:
        """[image tokens per camera] + [continuous state token] + [context tokens], with validity mask."""
        pg = self.paligemma_with_expert
        dtype = self.backbone_dtype
        embs, masks = [], []
        for img, img_mask in zip(inp.images, inp.image_masks, strict=True):
            tokens = pg.embed_image(img.to(dtype))
            embs.append(tokens)
            masks.append(img_mask[:, None].expand(-1, tokens.shape[1]))
        if self.cfg.continuous_state_token:
            embs.append(self.state_token_proj(inp.state.float())[:, None].to(dtype))
            masks.append(torch.ones_like(inp.context_mask[:, :1]))
        embs.append(pg.embed_tokens(inp.context_tokens).to(dtype))
        masks.append(inp.context_mask)
        return torch.cat(embs, dim=1), torch.cat(masks, dim=1)

    def encode(self, inp: PrefixInputs) -> tuple[list[KV], Tensor]:
        """Per-layer keys and values of the prefix, one row per branch and sample, and their mask.

        Each sample is ONE sequence: its context, then the suffix of every branch (one without CFG,
        positive and unconditioned with it). The context attends only to itself and each suffix to
        the context and itself, so the context is encoded once however many branches there are.
        """
        pg = self.paligemma_with_expert
        context, context_valid = self.embed_context(inp)
        bsize, n_context = context_valid.shape
        branches, n_suffix = inp.repeat, inp.suffix_tokens.shape[1]
        suffix = pg.embed_tokens(inp.suffix_tokens).to(self.backbone_dtype)
        # [branches * B, Ls] (branch-major) -> [B, branches * Ls]: each sample's suffixes in a row.
        suffix = suffix.view(branches, bsize, n_suffix, -1).transpose(0, 1).flatten(1, 2)
        suffix_valid = inp.suffix_mask.view(branches, bsize, n_suffix).transpose(0, 1)
        valid = torch.cat([context_valid, suffix_valid.flatten(1)], dim=1)
        kv = pg.encode_prefix(
            torch.cat([context, suffix], dim=1),
            _prefix_positions(context_valid, suffix_valid),
            _prefix_attention(valid, n_context, branches, n_suffix),
        )
        return _per_branch(kv, valid, n_context, branches, n_suffix)

    def velocity(self, x_t: Tensor, t: Tensor, prefix_kv: list[KV], prefix_mask: Tensor) -> Tensor:
        """Predicted flow velocity for noisy actions x_t at times t, given the cached prefix.

        x_t and t have B rows; the result has the prefix's rows (B, or 2B under CFG)."""
        dtype = self.backbone_dtype
        width = self.cfg.expert_width
        time_emb = sinusoidal_embedding(t, width, self.cfg.min_period, self.cfg.max_period)
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
        tokens = self.action_in_proj(x_t.float())
        out = self.paligemma_with_expert.run_expert(tokens.to(dtype), cond.to(dtype), prefix_kv, prefix_mask)
        return self.action_out_proj(out.float())

    def flow_loss(self, inp: PrefixInputs, actions: Tensor, noise: Tensor | None = None) -> Tensor:
        """Elementwise squared error of the velocity, [B, chunk, max_action_dim]."""
        cfg = self.cfg
        noise = torch.randn_like(actions) if noise is None else noise
        t = sample_time(
            actions.shape[0],
            cfg.time_sampling_beta_alpha,
            cfg.time_sampling_beta_beta,
            cfg.time_sampling_scale,
            cfg.time_sampling_offset,
            actions.device,
        )
        x_t, u_t = noisy_actions(actions, noise, t)
        prefix_kv, prefix_mask = self.encode(inp)
        return F.mse_loss(self.velocity(x_t, t, prefix_kv, prefix_mask), u_t, reduction="none")

    @torch.no_grad()
    def sample(self, inp: PrefixInputs, noise: Tensor, cfg_scale: float = 1.0) -> Tensor:
        """Euler integration from noise (t=1) to actions (t=0), the prefix KV computed once.

        With cfg_scale > 1 the prefix of `inp` holds 2B rows (positive suffixes first, unconditioned
        second); every step runs the expert once on the B noisy chunks against both, and mixes
        v = v_uncond + beta * (v_pos - v_uncond). On a GPU (cuda_graphs) the whole of it is a
        replayed CUDA graph (cuda_graphs.py).
        """
        steps = self.cfg.num_inference_steps

        def run(tensors: list[Tensor]) -> Tensor:
            prefix_kv, prefix_mask = self.encode(inp.with_tensors(tensors[:-1]))
            return self.denoise(prefix_kv, prefix_mask, tensors[-1], steps, cfg_scale)

        tensors = [*inp.tensors(), noise]
        if not (self.cfg.cuda_graphs and noise.is_cuda):
            return run(tensors)
        # Graphs read the weights where they were at capture: moved or replaced weights recapture.
        weights = tuple(p.data_ptr() for p in self.parameters())
        key = (steps, cfg_scale, inp.repeat, torch.is_inference_mode_enabled())
        return self.sample_graphs(run, key, weights, tensors)

    def denoise(
        self, prefix_kv: list[KV], prefix_mask: Tensor, noise: Tensor, steps: int, cfg_scale: float
    ) -> Tensor:
        x_t, dt = noise, -1.0 / steps
        for step in range(steps):
            t = torch.full((noise.shape[0],), 1.0 + step * dt, device=noise.device)
            v = self.velocity(x_t, t, prefix_kv, prefix_mask)
            if cfg_scale != 1.0:
                v_pos, v_uncond = v.chunk(2)
                v = v_uncond + cfg_scale * (v_pos - v_uncond)
            x_t = x_t + dt * v
        return x_t


def _prefix_positions(context_valid: Tensor, suffix_valid: Tensor) -> Tensor:
    """Rotary positions [B, Lc + branches * Ls]: every branch's suffix continues right after the
    context's valid tokens, as if it were the only one (padding takes no position)."""
    context = torch.cumsum(context_valid.long(), dim=1) - 1
    after = context_valid.sum(dim=1)[:, None, None]
    suffix = after + torch.cumsum(suffix_valid.long(), dim=2) - 1
    return torch.cat([context, suffix.flatten(1)], dim=1)


def _prefix_attention(valid: Tensor, n_context: int, branches: int, n_suffix: int) -> Tensor:
    """Boolean [B, 1, L, L] (query x key): keys must be valid; context keys are seen by every query,
    suffix keys only by queries of the same suffix."""
    # Segment of each position: 0 for the context, i for branch i's suffix (no host-to-device copy,
    # so it can be captured in a CUDA graph).
    offset = torch.arange(valid.shape[1], device=valid.device) - n_context
    segment = (offset.div(n_suffix, rounding_mode="floor") + 1).clamp(min=0)
    visible = (segment[None, :] == 0) | (segment[:, None] == segment[None, :])
    return visible[None, None] & valid[:, None, None, :]


def _per_branch(
    kv: list[KV], valid: Tensor, n_context: int, branches: int, n_suffix: int
) -> tuple[list[KV], Tensor]:
    """[B, ..., Lc + branches * Ls, ...] -> [branches * B, ..., Lc + Ls, ...] (branch-major): what
    the action expert of each branch attends to, and the matching validity mask."""
    if branches == 1:
        return kv, valid

    def split(x: Tensor, dim: int) -> Tensor:
        context = x.narrow(dim, 0, n_context)
        own = (x.narrow(dim, n_context + i * n_suffix, n_suffix) for i in range(branches))
        return torch.cat([torch.cat([context, part], dim=dim) for part in own], dim=0)

    return [(split(k, 2), split(v, 2)) for k, v in kv], split(valid, 1)
