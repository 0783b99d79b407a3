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
from flywheel.policies.pi_star_recap.flow_matching import noisy_actions, sample_time, sinusoidal_embedding
from flywheel.policies.pi_star_recap.iql import IQLHeads
from flywheel.policies.pi_star_recap.layers import KV


@dataclass
class PrefixInputs:
    """Everything the prefix sees. With `repeat` = 2 (CFG) the prompts have 2B rows while images and
    state keep B rows: they are embedded once and their tokens reused for both prompt halves."""

    images: list[Tensor]  # each [B, 3, S, S] in [-1, 1]
    image_masks: list[Tensor]  # each [B] bool: False for a camera absent from the batch
    tokens: Tensor  # [repeat * B, L] prompt ids
    token_mask: Tensor  # [repeat * B, L] bool
    state: Tensor  # [B, state_dim] normalized, for the continuous state token
    repeat: int = 1


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

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.paligemma_with_expert.language_model.embed_tokens.weight.dtype

    def embed_prefix(self, inp: PrefixInputs) -> tuple[Tensor, Tensor]:
        """[image tokens per camera] + [continuous state token] + [prompt tokens], with validity mask."""
        pg = self.paligemma_with_expert
        dtype = self.backbone_dtype
        embs, masks = [], []
        r = inp.repeat
        for img, img_mask in zip(inp.images, inp.image_masks, strict=True):
            tokens = pg.embed_image(img.to(dtype)).repeat(r, 1, 1)
            embs.append(tokens)
            masks.append(img_mask.repeat(r)[:, None].expand(-1, tokens.shape[1]))
        if self.cfg.continuous_state_token:
            embs.append(self.state_token_proj(inp.state.float())[:, None].to(dtype).repeat(r, 1, 1))
            masks.append(torch.ones_like(inp.token_mask[:, :1]))
        embs.append(pg.embed_tokens(inp.tokens).to(dtype))
        masks.append(inp.token_mask)
        return torch.cat(embs, dim=1), torch.cat(masks, dim=1)

    def encode(self, inp: PrefixInputs) -> tuple[list[KV], Tensor]:
        embs, mask = self.embed_prefix(inp)
        return self.paligemma_with_expert.encode_prefix(embs, mask), mask

    def velocity(self, x_t: Tensor, t: Tensor, prefix_kv: list[KV], prefix_mask: Tensor) -> Tensor:
        """Predicted flow velocity for noisy actions x_t at times t, given the cached prefix."""
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

        With cfg_scale > 1 the batch of `inp` holds 2B rows, positive prompts first, unconditioned
        second; every step runs the expert once on the 2B rows and mixes
        v = v_uncond + beta * (v_pos - v_uncond).
        """
        prefix_kv, prefix_mask = self.encode(inp)
        guided = cfg_scale != 1.0
        steps = self.cfg.num_inference_steps
        x_t, dt = noise, -1.0 / steps
        for step in range(steps):
            t = torch.full((prefix_mask.shape[0],), 1.0 + step * dt, device=noise.device)
            x_in = torch.cat([x_t, x_t]) if guided else x_t
            v = self.velocity(x_in, t, prefix_kv, prefix_mask)
            if guided:
                v_pos, v_uncond = v.chunk(2)
                v = v_uncond + cfg_scale * (v_pos - v_uncond)
            x_t = x_t + dt * v
        return x_t
