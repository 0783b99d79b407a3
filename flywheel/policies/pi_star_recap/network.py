"""The pi_star_recap network: prefix embedding, flow-matching loss, and (guided) Euler sampling.

Parameter names follow LeRobot's PI05Pytorch (paligemma_with_expert, action_in_proj, action_out_proj,
time_mlp_in, time_mlp_out) so pi05_base loads by a prefix change. Modules pi05_base lacks are optional:
`state_token_proj` (continuous_state_token), `iql` (advantage_estimator="iql") and `indicator_embedding`
(indicator_conditioning other than "prompt"; zero-initialised, and read as zeros from a checkpoint that
lacks it, which is the same model).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flywheel.policies.pi_star_recap.backbone import ExpertPrefix, PaliGemmaWithExpert
from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig
from flywheel.policies.pi_star_recap.cuda_graphs import CudaGraphCache
from flywheel.policies.pi_star_recap.flow_matching import noisy_actions, sample_time, sinusoidal_embedding
from flywheel.policies.pi_star_recap.iql import IQLHeads
from flywheel.policies.pi_star_recap.layers import KV, fan_out
from flywheel.policies.pi_star_recap.prompt import INDICATOR_IDS

# guide(x_t, time, velocity) -> the velocity a denoising step uses (real-time chunking's guidance).
Guide = Callable[[Tensor, float, Callable[[Tensor], Tensor]], Tensor]


@dataclass
class PrefixInputs:
    """Everything the prefix sees. The context (images, state token, task and state text) has B rows;
    each branch has its suffix (indicator and "Action: "), B rows each: one branch, or under CFG two,
    positive first. The context is embedded and encoded once and its keys and values reused by every
    branch."""

    images: list[Tensor]  # each [B, 3, S, S] in [-1, 1]
    image_masks: list[Tensor]  # each [B] bool: False for a camera absent from the batch
    context_tokens: Tensor  # [B, Lc] prompt ids
    context_mask: Tensor  # [B, Lc] bool
    suffix_tokens: list[Tensor]  # per branch [B, Ls_branch] prompt ids
    suffix_masks: list[Tensor]  # per branch [B, Ls_branch] bool
    state: Tensor  # [B, state_dim] normalized, for the continuous state token
    # Per branch [B] long: the indicator of each row (prompt.INDICATOR_IDS: 0 dropped, 1 negative,
    # 2 positive), for the learned indicator embedding (indicator_conditioning). Empty: none.
    indicators: list[Tensor] = field(default_factory=list)

    @property
    def branches(self) -> int:
        return len(self.suffix_tokens)

    def tensors(self) -> list[Tensor]:
        return [
            *self.images,
            *self.image_masks,
            self.context_tokens,
            self.context_mask,
            *self.suffix_tokens,
            *self.suffix_masks,
            self.state,
            *self.indicators,
        ]

    def with_tensors(self, tensors: list[Tensor]) -> "PrefixInputs":
        """The same inputs made of `tensors` (in the order of tensors())."""
        n, r = len(self.images), self.branches
        images, masks, rest = tensors[:n], tensors[n : 2 * n], tensors[2 * n :]
        context_tokens, context_mask, rest = rest[0], rest[1], rest[2:]
        suffix_tokens, suffix_masks, state = rest[:r], rest[r : 2 * r], rest[2 * r]
        indicators = rest[2 * r + 1 :]
        return PrefixInputs(
            list(images),
            list(masks),
            context_tokens,
            context_mask,
            list(suffix_tokens),
            list(suffix_masks),
            state,
            list(indicators),
        )

    def indicator_rows(self) -> Tensor | None:
        """The indicator ids of every branch's rows, branch-major ([branches * B]), or None."""
        return torch.cat(self.indicators) if self.indicators else None


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
        if cfg.indicator_conditioning != "prompt" and cfg.advantage_estimator == "recap":  # iql: no indicator
            self.indicator_embedding = IndicatorEmbedding(cfg.indicator_conditioning, cfg)
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
        suffixes = [pg.embed_tokens(tokens).to(self.backbone_dtype) for tokens in inp.suffix_tokens]
        segments = [context.shape[1], *(suffix.shape[1] for suffix in suffixes)]
        valid = torch.cat([context_valid, *inp.suffix_masks], dim=1)
        kv = pg.encode_prefix(
            torch.cat([context, *suffixes], dim=1),
            _prefix_positions(context_valid, inp.suffix_masks),
            _prefix_attention(valid, segments),
        )
        return _per_branch(kv, valid, segments)

    def time_modulations(self, t: Tensor, indicator: Tensor | None = None) -> list[Tensor]:
        """The expert norms' modulations (scale, shift, gate) for flow-matching times t [N], one
        [N, 3 x width] per norm.

        With a learned indicator embedding (indicator_conditioning "time" or "modulation") and
        `indicator` ids [M], the indicator is added too: to the time conditioning or to every norm's
        modulation. t and indicator broadcast: N = M, or one of them 1, or (sampling) t [steps, 1]
        against M rows, giving [steps, M, 3 x width]."""
        time_emb = sinusoidal_embedding(t, self.cfg.expert_width, self.cfg.min_period, self.cfg.max_period)
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
        ind = getattr(self, "indicator_embedding", None)
        if ind is not None and indicator is not None and ind.mode == "time":
            cond = cond + ind(indicator)
        modulations = self.paligemma_with_expert.gemma_expert.model.modulations(cond.to(self.backbone_dtype))
        if ind is not None and indicator is not None and ind.mode == "modulation":
            extra = ind(indicator).to(self.backbone_dtype).chunk(len(modulations), dim=-1)
            modulations = [m + e for m, e in zip(modulations, extra, strict=True)]
        return modulations

    def velocity(
        self,
        x_t: Tensor,
        t: Tensor,
        prefix_kv: list[KV],
        prefix_mask: Tensor,
        indicator: Tensor | None = None,
    ) -> Tensor:
        """Predicted flow velocity for noisy actions x_t at times t, given the cached prefix.

        x_t and t have B rows; the result has the prefix's rows (B, or 2B under CFG). `indicator`:
        the ids of the prefix's rows, for the learned indicator embedding (None: not used)."""
        prefix = self.paligemma_with_expert.prepare_expert(prefix_kv, prefix_mask, x_t.shape[1])
        modulations = self.time_modulations(t, indicator)
        return self.action_out_proj(self._expert(x_t, modulations, prefix, indicator).float())

    def _expert(
        self, x_t: Tensor, modulations: list[Tensor], prefix: ExpertPrefix, indicator: Tensor | None = None
    ) -> Tensor:
        """The expert's last hidden states for x_t, before the output projection."""
        tokens = self.action_in_proj(x_t.float())
        ind = getattr(self, "indicator_embedding", None)
        if ind is not None and indicator is not None and ind.mode == "tokens":
            # [B] actions under [M] indicators (M = branches x B under CFG): the tokens fan out here.
            emb = ind(indicator)[:, None, :]
            tokens = _fanned(tokens, emb.shape[0]) + emb
        return self.paligemma_with_expert.run_expert(tokens.to(self.backbone_dtype), modulations, prefix)

    def flow_loss(
        self, inp: PrefixInputs, actions: Tensor, noise: Tensor | None = None, t: Tensor | None = None
    ) -> Tensor:
        """Elementwise squared error of the velocity, [B, chunk, max_action_dim]. `noise` and the
        times `t` [B] are drawn when not given (given: paired comparisons, conditioning.py)."""
        cfg = self.cfg
        noise = torch.randn_like(actions) if noise is None else noise
        if t is None:
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
        velocity = self.velocity(x_t, t, prefix_kv, prefix_mask, inp.indicator_rows())
        return F.mse_loss(velocity, u_t, reduction="none")

    @torch.no_grad()
    def sample(
        self, inp: PrefixInputs, noise: Tensor, cfg_scale: float = 1.0, guide: Guide | None = None
    ) -> Tensor:
        """Euler integration from noise (t=1) to actions (t=0), the prefix KV computed once.

        With cfg_scale > 1 `inp` has two branches (positive suffixes first, unconditioned second);
        every step runs the expert once on the B noisy chunks against both, and mixes
        v = v_uncond + beta * (v_pos - v_uncond). On a GPU (cuda_graphs) the whole of it is a
        replayed CUDA graph (cuda_graphs.py). `guide` (real-time chunking): see `denoise`; a guided
        sampling runs eagerly (RTC's guidance uses autograd, which a captured graph does not replay).
        """
        steps = self.cfg.num_inference_steps

        def run(tensors: list[Tensor]) -> Tensor:
            inputs = inp.with_tensors(tensors[:-1])
            prefix_kv, prefix_mask = self.encode(inputs)
            indicator = inputs.indicator_rows() if hasattr(self, "indicator_embedding") else None
            return self.denoise(prefix_kv, prefix_mask, tensors[-1], steps, cfg_scale, indicator, guide)

        tensors = [*inp.tensors(), noise]
        if guide is not None or not (self.cfg.cuda_graphs and noise.is_cuda):
            return run(tensors)
        # Graphs read the weights where they were at capture: moved or replaced weights recapture.
        weights = tuple(p.data_ptr() for p in self.parameters())
        key = (steps, cfg_scale, inp.branches, torch.is_inference_mode_enabled())
        return self.sample_graphs(run, key, weights, tensors)

    def denoise(
        self,
        prefix_kv: list[KV],
        prefix_mask: Tensor,
        noise: Tensor,
        steps: int,
        cfg_scale: float,
        indicator: Tensor | None = None,
        guide: Guide | None = None,
    ) -> Tensor:
        """Euler steps from noise. Everything that does not depend on x_t is computed once, before
        the first step: the expert's view of the prefix and every step's time modulations.
        `indicator`: the prefix rows' indicator ids (learned indicator embedding only).
        `guide(x_t, time, velocity)`: the velocity used at each step instead of velocity(x_t), where
        velocity is the model's (CFG-mixed) velocity function of x_t at that step and time a float
        (1 = noise): real-time chunking's guidance (modeling_pi_star_recap.py)."""
        prefix = self.paligemma_with_expert.prepare_expert(prefix_kv, prefix_mask, noise.shape[1])
        dt = -1.0 / steps
        # Every row is at the same time: one modulation row per step, broadcast over the batch
        # (with the indicator in the modulations: one row per prefix row).
        t = 1.0 + dt * torch.arange(steps, device=noise.device)
        if not hasattr(self, "indicator_embedding"):
            indicator = None
        if indicator is None:
            per_step = [m.split(1) for m in self.time_modulations(t)]
        else:
            per_step = self.time_modulations(t[:, None], indicator)  # each [steps, M or 1, 3 x width]
        x_t = noise
        for step in range(steps):

            def velocity(x: Tensor, step: int = step) -> Tensor:
                h = self._expert(x, [m[step] for m in per_step], prefix, indicator).float()
                if cfg_scale != 1.0:
                    # v_uncond + beta * (v_pos - v_uncond), mixed before the (affine) output
                    # projection, which then runs on B rows instead of 2B.
                    h_pos, h_uncond = h.chunk(2)
                    h = torch.lerp(h_uncond, h_pos, cfg_scale)
                return self.action_out_proj(h)

            v_t = velocity(x_t) if guide is None else guide(x_t, 1.0 + dt * step, velocity)
            x_t = x_t + dt * v_t
        return x_t


class IndicatorEmbedding(nn.Module):
    """A learned embedding of the advantage indicator (dropped / negative / positive), beside the
    prompt's text, so the action expert is conditioned on it the way diffusion models condition on
    a class: through the same path as the flow-matching time.

    mode "time": [3, width] added to the time conditioning before the expert's adaptive norms;
    "modulation": [3, norms x 3 x width] added to every adaptive norm's scale, shift and gate;
    "tokens": [3, width] added to every action token. Zero-initialised, so a model starts exactly as
    it would without it (pi05_base fine-tuning included), and a checkpoint saved without it (an
    older one) loads as that same zero embedding.
    """

    def __init__(self, mode: str, cfg: PiStarRECAPConfig) -> None:
        super().__init__()
        self.mode = mode
        width = cfg.expert_width
        size = {"time": width, "tokens": width, "modulation": (2 * cfg.expert_depth + 1) * 3 * width}[mode]
        self.weight = nn.Parameter(torch.zeros(len(INDICATOR_IDS), size))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args) -> None:
        if prefix + "weight" not in state_dict:
            # A checkpoint from before the embedding existed: zero is that model exactly.
            logging.getLogger(__name__).info("%sweight not in the checkpoint: zero (no effect)", prefix)
            state_dict = {**state_dict, prefix + "weight": torch.zeros_like(self.weight)}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)


def _fanned(x: Tensor, rows: int) -> Tensor:
    """x's B rows repeated for each branch up to `rows` (branch-major); one row broadcasts."""
    return x if x.shape[0] in (1, rows) else fan_out(x, rows // x.shape[0])


def _prefix_positions(context_valid: Tensor, suffix_masks: list[Tensor]) -> Tensor:
    """Rotary positions [B, Lc + sum of Ls]: every branch's suffix continues right after the
    context's valid tokens, as if it were the only one (padding takes no position)."""
    context = torch.cumsum(context_valid.long(), dim=1) - 1
    after = context_valid.sum(dim=1, keepdim=True)
    suffixes = [after + torch.cumsum(mask.long(), dim=1) - 1 for mask in suffix_masks]
    return torch.cat([context, *suffixes], dim=1)


def _prefix_attention(valid: Tensor, segments: list[int]) -> Tensor:
    """Boolean [B, 1, L, L] (query x key) for a sequence made of `segments` (lengths: the context,
    then each branch's suffix): keys must be valid; context keys are seen by every query, suffix keys
    only by queries of the same suffix."""
    # Segment id of each position, built on the device (no host-to-device copy, so that it can be
    # captured in a CUDA graph).
    segment = torch.cat([torch.full((n,), i, device=valid.device) for i, n in enumerate(segments)])
    visible = (segment[None, :] == 0) | (segment[:, None] == segment[None, :])
    return visible[None, None] & valid[:, None, None, :]


def _per_branch(kv: list[KV], valid: Tensor, segments: list[int]) -> tuple[list[KV], Tensor]:
    """[B, ..., Lc + sum of Ls, ...] -> [branches * B, ..., Lc + max Ls, ...] (branch-major): what the
    action expert of each branch attends to, and the matching validity mask. A branch with a shorter
    suffix is padded with masked-out zeros."""
    n_context, lengths = segments[0], segments[1:]
    if len(lengths) == 1:
        return kv, valid
    starts = [n_context + sum(lengths[:i]) for i in range(len(lengths))]
    longest = max(lengths)

    def split(x: Tensor, dim: int) -> Tensor:
        context = x.narrow(dim, 0, n_context)
        rows = []
        for start, length in zip(starts, lengths, strict=True):
            parts = [context, x.narrow(dim, start, length)]
            if length < longest:
                pad_shape = list(x.shape)
                pad_shape[dim] = longest - length
                parts.append(x.new_zeros(pad_shape))
            rows.append(torch.cat(parts, dim=dim))
        return torch.cat(rows, dim=0)

    return [(split(k, 2), split(v, 2)) for k, v in kv], split(valid, 1)
