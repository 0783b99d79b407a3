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

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        scale, shift, gate = self.dense(cond).float().unsqueeze(1).chunk(3, dim=-1)
        return (normed * (1 + scale) + shift).to(x.dtype), gate.to(x.dtype)


def project_qkv(attn: GemmaAttention, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as [batch, heads, tokens, head_dim] with rotary positions applied to q and k."""
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def attend(attn: GemmaAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Grouped-query attention (Gemma: 1/sqrt(head_dim) scaling); mask is boolean, True = may attend.

    K and V are repeated to all query heads: in a CPU micro-benchmark SDPA's own `enable_gqa` combined
    with a mask was 2-3x slower than this (the whole chunk latency did not measurably change).
    """
    groups = q.shape[1] // k.shape[1]
    k, v = (x.to(q.dtype).repeat_interleave(groups, dim=1) if groups > 1 else x.to(q.dtype) for x in (k, v))
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
        self, h: Tensor, cond: Tensor, cos: Tensor, sin: Tensor, prefix_kv: KV, mask: Tensor
    ) -> Tensor:
        x, gate = self.input_layernorm(h, cond)
        q, k, v = project_qkv(self.self_attn, x, cos, sin)
        k = torch.cat([prefix_kv[0].to(k.dtype), k], dim=2)
        v = torch.cat([prefix_kv[1].to(v.dtype), v], dim=2)
        h = h + gate * attend(self.self_attn, q, k, v, mask)
        x, gate = self.post_attention_layernorm(h, cond)
        return h + gate * self.mlp(x)


class ExpertModel(nn.Module):
    """The action expert's stack (`gemma_expert.model.*` in pi05_base)."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ExpertLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = AdaptiveRMSNorm(config.hidden_size, config.hidden_size)


class GemmaExpert(nn.Module):
    """Wrapper so that parameter names read `gemma_expert.model.layers...` like the checkpoint."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        self.model = ExpertModel(config)
