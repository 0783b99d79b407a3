"""Transformer layers shared by the prefix (stock HF Gemma layers) and the action expert.

The prefix and the expert run as two stacks that meet in attention: at layer i, the expert's action
tokens attend to the prefix's layer-i keys/values plus their own. The prefix never attends to actions,
so running the prefix stack first and keeping its per-layer (K, V) gives the same result as pi0.5's
joint pass, lets training and inference share one code path, and lets inference reuse the prefix KV
for every denoising step without DynamicCache (whose in-place mutation would corrupt a reused cache).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.gemma.configuration_gemma import GemmaConfig
from transformers.models.gemma.modeling_gemma import GemmaAttention, GemmaMLP, apply_rotary_pos_emb

KV = tuple[Tensor, Tensor]


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose scale, shift and residual gate come from the flow-matching time embedding.

    Same parameterisation as openpi's adaRMS (a single `dense` producing 3 x width), so pi05_base's
    `*.input_layernorm.dense.*` weights load unchanged.
    """

    def __init__(self, width: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * width)
        # Zero weight: at init the modulation is only the bias, as in openpi.
        nn.init.zeros_(self.dense.weight)

    def modulation(self, cond: Tensor) -> Tensor:
        """[N, 3 x width] scale, shift and gate for N time embeddings. Apart from x, so that sampling
        computes it once per chunk for all its denoising steps."""
        return self.dense(cond)

    def forward(self, x: Tensor, modulation: Tensor) -> tuple[Tensor, Tensor]:
        """x [R, tokens, width] normalized and modulated, and the residual gate. modulation has R rows,
        or fewer when the rows are CFG branches of the same actions (see fan_out), or one for all."""
        modulation = fan_out(modulation, x.shape[0] // modulation.shape[0])
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        scale, shift, gate = modulation.float().unsqueeze(1).chunk(3, dim=-1)
        return (normed * (1 + scale) + shift).to(x.dtype), gate.to(x.dtype)


def fan_out(x: Tensor, branches: int) -> Tensor:
    """x's B rows repeated for each CFG branch (branch-major). One row, as the rollout daemon has, is
    returned as it is: broadcasting repeats it for free in the next elementwise op, where a copy
    would cost a kernel of its own."""
    if branches == 1 or x.shape[0] == 1:
        return x
    return x.repeat(branches, *[1] * (x.dim() - 1))


def project_qkv(
    attn: GemmaAttention, x: Tensor, cos: Tensor, sin: Tensor, branches: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as [batch, heads, tokens, head_dim] with rotary positions applied to q and k.

    `branches` > 1 repeats the projections along the batch before the rotary step (whose positions
    differ per CFG branch), so rows that are the same in every branch are projected once. (With one
    row, the rotary step's broadcasting does the repeating, and v keeps its one row.)
    """
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k, v = (fan_out(t, branches) for t in (q, k, v))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def attend(attn: GemmaAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Grouped-query attention (Gemma: 1/sqrt(head_dim) scaling); mask is boolean, True = may attend.

    With a mask per key ([B, 1, 1, S]: the action expert), the query heads that share a key/value
    head are folded into the query axis, so one SDPA call serves them without copying K and V per
    head (about 10% faster than the copy for the tiny expert on the CPU). A mask per query and key
    (the prefix) would have to be copied per head instead, so there K and V are repeated. SDPA's
    own `enable_gqa` with a mask was 2-3x slower than either on the CPU.
    """
    batch, heads, tokens, dim = q.shape
    groups = heads // k.shape[1]
    k, v = k.to(q.dtype), v.to(q.dtype)
    if mask.shape[-2] == 1:
        folded = q.reshape(batch, k.shape[1], groups * tokens, dim)
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=mask).reshape(q.shape)
    else:
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.o_proj(out.transpose(1, 2).flatten(2))


def prefix_layer(layer: nn.Module, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> tuple[Tensor, KV]:
    """One stock GemmaDecoderLayer, run by hand so that its K and V come out."""
    q, k, v = project_qkv(layer.self_attn, layer.input_layernorm(h), cos, sin)
    h = h + attend(layer.self_attn, q, k, v, mask)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, (k, v)


class ExpertLayer(nn.Module):
    """A Gemma decoder layer whose norms are time-conditioned and whose residuals are gated."""

    def __init__(self, config: GemmaConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = GemmaAttention(config, layer_idx)
        self.mlp = GemmaMLP(config)
        self.input_layernorm = AdaptiveRMSNorm(config.hidden_size, config.hidden_size)
        self.post_attention_layernorm = AdaptiveRMSNorm(config.hidden_size, config.hidden_size)

    def forward(
        self,
        h: Tensor,
        modulations: tuple[Tensor, Tensor],
        cos: Tensor,
        sin: Tensor,
        prefix_kv: KV,
        mask: Tensor,
    ) -> Tensor:
        """h may have B rows against a prefix of branches x B rows (CFG): the action tokens are the
        same in every branch until they attend to the prefix, so here they fan out. The two norms'
        modulations (AdaptiveRMSNorm.modulation) have B rows, or one for all (sampling), or one per
        prefix row when they carry the advantage indicator (indicator_conditioning, under CFG): then
        the action tokens fan out before the first norm instead."""
        rows = prefix_kv[0].shape[0]
        if modulations[0].shape[0] == rows != h.shape[0]:
            h = _rows(h, rows) if h.shape[0] == 1 else fan_out(h, rows // h.shape[0])
        x, gate = self.input_layernorm(h, modulations[0])
        branches = rows // h.shape[0]
        q, k, v = project_qkv(self.self_attn, x, cos, sin, branches)
        h, gate = fan_out(h, branches), fan_out(gate, branches)
        k = torch.cat([prefix_kv[0].to(k.dtype), _rows(k, rows)], dim=2)
        v = torch.cat([prefix_kv[1].to(v.dtype), _rows(v, rows)], dim=2)
        h = h + gate * attend(self.self_attn, q, k, v, mask)
        x, gate = self.post_attention_layernorm(h, modulations[1])
        return h + gate * self.mlp(x)


def _rows(x: Tensor, rows: int) -> Tensor:
    """x with `rows` rows: itself, or its one row as a stride-0 view (fan_out left it for broadcasting,
    which torch.cat does not do)."""
    return x if x.shape[0] == rows else x.expand(rows, *x.shape[1:])


class ExpertModel(nn.Module):
    """The action expert's stack (`gemma_expert.model.*` in pi05_base)."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ExpertLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = AdaptiveRMSNorm(config.hidden_size, config.hidden_size)

    def modulations(self, cond: Tensor) -> list[Tensor]:
        """Every time-conditioned norm's modulation for `cond` [N, width]: each layer's two, then the
        final norm's."""
        norms = [n for layer in self.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        return [norm.modulation(cond) for norm in [*norms, self.norm]]


class GemmaExpert(nn.Module):
    """Wrapper so that parameter names read `gemma_expert.model.layers...` like the checkpoint."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.model = ExpertModel(config)
