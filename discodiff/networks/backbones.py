"""Denoiser backbones F_theta: an MLP for vectors and a small U-Net for images.

Both take the preconditioned input c_in*x, a conditioning vector `emb` [B, E] (noise level, class,
pooled latents) and a context `ctx` [B, T, E] (one learned register token + the m latent embeddings),
and return F_x of the input's shape. The U-Net reads the latents through cross-attention from image
features to `ctx` (Xu et al. 2024, Sec. 4); the MLP adds a per-code output term, as the paper's toy
denoiser does, so the latent can move the prediction directly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from discodiff.config import DenoiserConfig
from discodiff.networks.layers import GroupNorm32, LayerNorm32, MultiHeadAttention, groups_for


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ---------------------------------------------------------------------------------------------
# MLP (vectors)


class MLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = LayerNorm32(width)
        self.film = nn.Linear(emb_dim, 2 * width)        # scale and shift from the conditioning
        self.fc1 = nn.Linear(width, width)
        self.fc2 = _zero(nn.Linear(width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        y = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.dropout(F.silu(self.fc1(y))))


class MLPBackbone(nn.Module):
    def __init__(self, dim: int, ctx_tokens: int, cfg: DenoiserConfig):
        super().__init__()
        w, e = cfg.width, cfg.emb_dim
        self.inp = nn.Linear(dim, w)
        self.blocks = nn.ModuleList(MLPBlock(w, e, cfg.dropout) for _ in range(cfg.depth))
        self.out_norm = LayerNorm32(w)
        self.out = _zero(nn.Linear(w, dim))
        # Per-code output term: an MLP of (all context tokens, conditioning) added to F_x.
        self.latent_out = nn.Sequential(nn.Linear(ctx_tokens * e + e, w), nn.SiLU(), _zero(nn.Linear(w, dim)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)                                   # [B, W]
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(F.silu(self.out_norm(h)))          # [B, D]
        return out + self.latent_out(torch.cat([ctx.flatten(1), emb], dim=1))


# ---------------------------------------------------------------------------------------------
# U-Net (images)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm32(groups_for(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)           # scale-shift modulation
        self.norm2 = GroupNorm32(groups_for(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                           # [B, Cout, H, W]
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)   # 2x [B, Cout, 1, 1]
        # norm2's affine folded into the modulation, (n w + b)(1 + s) + t = n [w (1+s)] + [b (1+s) + t]:
        # the same function, but the [B, C, H, W] tensor sees one Mul and one Add instead of two each.
        gain = 1 + scale
        a = (self.norm2.weight[:, None, None] * gain).to(h.dtype)
        c = (self.norm2.bias[:, None, None] * gain + shift).to(h.dtype)
        h = F.silu(self.norm2.normalize(h) * a + c)
        h = self.conv2(self.dropout(h))
        return (self.skip(x) + h) * (1 / math.sqrt(2))


class CrossAttention(nn.Module):
    """Image features [B, C, H, W] attend to the latent context [B, T, E]."""

    def __init__(self, channels: int, ctx_dim: int, heads: int):
        super().__init__()
        self.norm = GroupNorm32(groups_for(channels), channels)
        self.attn = MultiHeadAttention(channels, heads, ctx_dim=ctx_dim)
        _zero(self.attn.proj)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        # Kept channels-first throughout (no transposes of the image-sized tensor): the projections are
        # 1x1 convolutions with the Linear weights, attention weights are [B, heads, T, HW].
        b, c, h, w = x.shape
        a = self.attn
        heads, dh, t = a.heads, c // a.heads, ctx.shape[1]
        q = F.conv2d(self.norm(x), a.q.weight[:, :, None, None], a.q.bias).view(b, heads, dh, h * w)
        k, v = a.kv(ctx).view(b, t, 2, heads, dh).permute(2, 0, 3, 1, 4)        # 2x [B, heads, T, dh]
        scores = torch.matmul(k, q).float() * (dh ** -0.5)                       # [B, heads, T, HW]
        probs = torch.softmax(scores, dim=2).to(v.dtype)                         # over the T context tokens
        out = torch.matmul(v.transpose(2, 3), probs).reshape(b, c, h, w)         # [B, C, H, W]
        return x + F.conv2d(out, a.proj.weight[:, :, None, None], a.proj.bias)


class Level(nn.Module):
    """Residual blocks of one resolution, each followed by cross-attention where enabled."""

    def __init__(self, cins: list[int], cout: int, cfg: DenoiserConfig, attn: bool):
        super().__init__()
        e = cfg.emb_dim
        self.res = nn.ModuleList(ResBlock(cin, cout, e, cfg.dropout) for cin in cins)
        self.attn = nn.ModuleList(CrossAttention(cout, e, cfg.heads) for _ in cins) if attn else None


class UNetBackbone(nn.Module):
    def __init__(self, channels: int, ctx_tokens: int, cfg: DenoiserConfig):
        super().__init__()
        del ctx_tokens  # the U-Net attends to any number of context tokens
        chs = [cfg.width * mult for mult in cfg.channel_mult]
        self.conv_in = nn.Conv2d(channels, chs[0], 3, padding=1)
        skips = [chs[0]]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        cin = chs[0]
        for i, ch in enumerate(chs):
            self.down.append(Level([cin] + [ch] * (cfg.depth - 1), ch, cfg, i in cfg.attn_levels))
            skips += [ch] * cfg.depth
            cin = ch
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = Level([cin, cin], cin, cfg, attn=True)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(chs))):
            cins = []
            for _ in range(cfg.depth + 1):
                cins.append(cin + skips.pop())
                cin = ch
            self.up.append(Level(cins, ch, cfg, i in cfg.attn_levels))
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = GroupNorm32(groups_for(cin), cin)
        self.conv_out = _zero(nn.Conv2d(cin, channels, 3, padding=1))

    @staticmethod
    def _run(level: Level, i: int, h: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = level.res[i](h, emb)
        return level.attn[i](h, ctx) if level.attn is not None else h

    def forward(self, x: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        skips = [h]
        for li, level in enumerate(self.down):
            for i in range(len(level.res)):
                h = self._run(level, i, h, emb, ctx)
                skips.append(h)
            if li < len(self.downsample):
                h = self.downsample[li](h)
                skips.append(h)
        for i in range(2):
            h = self._run(self.mid, i, h, emb, ctx)
        for li, level in enumerate(self.up):
            for i in range(len(level.res)):
                h = self._run(level, i, torch.cat([h, skips.pop()], dim=1), emb, ctx)
            if li < len(self.upsample):
                h = self.upsample[li](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
