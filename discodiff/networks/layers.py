"""Building blocks shared by the denoiser, encoder and prior.

Precision rule (mixed fp16, see DESIGN "Denoiser graph"): Linear/Conv weights may be fp16, while
normalisation statistics, attention softmax and the noise embedding's sinusoids are always computed in
float32. Each block casts explicitly at those points; in a pure float32 model the casts are no-ops and
vanish from the exported graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierFeatures(nn.Module):
    """Sinusoids of a scalar (EDM's c_noise), float32 [B] -> float32 [B, dim]. Frequencies 1..100."""

    def __init__(self, dim: int, max_freq: float = 100.0):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(max_freq), half)), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t.float()[:, None] * self.freqs[None, :]  # [B, dim/2], float32 always
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32 whatever the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The normalisation without the affine (callers fold weight and bias into what follows)."""
        return F.group_norm(x.float(), self.num_groups, None, None, self.eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm in float32 whatever the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class GELU(nn.Module):
    """Exact (erf) GELU written as x * (1 + erf(x / sqrt 2)) * 0.5: the same function as nn.GELU(), in
    the operand order ONNX Runtime's Gelu fusion matches (nn.GELU exports at opset 18 as five
    unfused nodes; this becomes one, which matters in the per-token prior step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + torch.erf(x / math.sqrt(2.0))) * 0.5


def groups_for(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with the softmax in float32.

    q [B, H, Tq, Dh], k/v [B, H, Tk, Dh], mask bool broadcastable to [B, H, Tq, Tk] (True = attend).
    Written out (not F.scaled_dot_product_attention) so the exported graph is plain MatMul/Softmax that
    every backend takes, with the float32 island visible.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e30)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


class MultiHeadAttention(nn.Module):
    """Attention from x [B, Tq, dim] to ctx [B, Tk, ctx_dim] (ctx = x for self-attention)."""

    def __init__(self, dim: int, heads: int, ctx_dim: int | None = None):
        super().__init__()
        assert dim % heads == 0, f"width {dim} must be divisible by heads {heads}"
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        b, tq, d = x.shape
        ctx = x if ctx is None else ctx
        h = self.heads
        q = self.q(x).view(b, tq, h, d // h).transpose(1, 2)                  # [B, H, Tq, Dh]
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2x [B, H, Tk, Dh]
        out = attention(q, k, v, mask)                                         # [B, H, Tq, Dh]
        return self.proj(out.transpose(1, 2).reshape(b, tq, d))


class TransformerBlock(nn.Module):
    """Pre-LN self-attention + MLP block (ViT encoder)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = LayerNorm32(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = LayerNorm32(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LatentEmbedding(nn.Module):
    """Embeds m discrete latents, each from its own codebook of k codes plus a learned null code.

    Hard tokens: int [B, m] in 0..k (k = dropped latent -> null embedding), looked up with one Gather.
    Soft weights (Gumbel-softmax in training): float [B, m, k+1], mixed by a matmul with the same table.
    Both give [B, m, dim], identical for one-hot weights.
    """

    def __init__(self, m: int, k: int, dim: int):
        super().__init__()
        self.m, self.k = m, k
        self.table = nn.Parameter(torch.randn(m, k + 1, dim) * 0.5)  # [m, k+1, dim]; row null_code(k) = k

    def forward(self, tokens: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is not None:
            return torch.einsum("bmk,mkd->bmd", weights.to(self.table.dtype), self.table)
        # Gather from the flattened table: latent j's code c sits at row j*(k+1)+c.
        offset = torch.arange(self.m, device=tokens.device, dtype=tokens.dtype) * (self.k + 1)
        flat = self.table.reshape(self.m * (self.k + 1), -1)
        return flat.index_select(0, (tokens + offset).reshape(-1)).reshape(tokens.shape[0], self.m, -1)
