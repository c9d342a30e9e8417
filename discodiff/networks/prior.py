"""The autoregressive prior p_psi(z | y): a small decoder-only transformer over the m latent tokens
(Xu et al. 2024, Sec. 3, trained second on the frozen encoder's tokens).

Sequence: position 0 holds the class label (num_classes = "no label" for unconditional models),
positions 1..m-1 hold z_1..z_{m-1}; the logits at position i predict z_{i+1}. Input ids are shared
in one table: labels at 0..num_classes, latent codes at num_classes+1+c.

Two forwards over the same weights:
- `forward(tokens)`: all positions at once with a causal mask (the recompute graph);
- `step(token, pos, k_cache, v_cache)`: one position with an explicit static-size KV cache
  [layers, B, heads, max_len, head_dim]. The cache write is a masked blend (a Where on the position
  mask), not a scatter, so the exported graph has no ScatterND/If/Loop and runs on ONNX Runtime,
  TensorRT and CUDA graphs alike.
"""
from __future__ import annotations

import torch
from torch import nn

from discodiff.config import ModelConfig
from discodiff.runtime.contract import null_label
from discodiff.networks.layers import GELU, LayerNorm32, attention


class PriorBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = LayerNorm32(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = LayerNorm32(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), GELU(), nn.Linear(4 * width, width))

    def qkv_heads(self, x: torch.Tensor):
        b, t, w = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)           # 3x [B, H, T, Dh]

    def finish(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = att.shape
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, h * dh))
        return x + self.mlp(self.norm2(x))

    # One position (the KV-cache step): x stays 2-D [B, W], so each Linear exports as one Gemm and the
    # head split needs no Transpose (a length-1 axis moves for free in a Reshape). Same arithmetic as
    # qkv_heads/finish at T = 1; it cuts the step graph from ~95 to ~70 nodes after ONNX Runtime's
    # fusions, and at batch 1 the step costs about 1 us per node.
    def qkv_heads_1(self, x: torch.Tensor):
        b, w = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, 3, self.heads, 1, w // self.heads)
        return qkv.unbind(1)                                   # 3x [B, H, 1, Dh]

    def finish_1(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(att.reshape(x.shape))                # [B, H, 1, Dh] -> [B, W]
        return x + self.mlp(self.norm2(x))


class Prior(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        p = cfg.prior
        if p.width % p.heads:
            raise ValueError(f"prior width {p.width} must be divisible by heads {p.heads}")
        self.m, self.k, self.num_classes = cfg.m, cfg.k, cfg.num_classes
        self.max_len = cfg.m
        self.layers, self.heads, self.head_dim = p.depth, p.heads, p.width // p.heads
        self.label_ids = null_label(cfg.num_classes) + 1                # labels 0..C-1 and the null label C
        self.tok_emb = nn.Embedding(self.label_ids + cfg.k, p.width)    # then the k codes
        self.pos_emb = nn.Parameter(torch.randn(self.max_len, p.width) * 0.02)
        self.blocks = nn.ModuleList(PriorBlock(p.width, p.heads) for _ in range(p.depth))
        self.norm = LayerNorm32(p.width)
        self.head = nn.Linear(p.width, cfg.k)

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        return (self.layers, batch, self.heads, self.max_len, self.head_dim)

    def input_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T] (label, z_1, ...) -> ids into the shared table."""
        offset = torch.full((tokens.shape[1],), self.label_ids, dtype=tokens.dtype, device=tokens.device)
        offset[0] = 0
        return tokens + offset

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Recompute: tokens int [B, T] (T <= m) -> logits [B, T, k], causal."""
        t = tokens.shape[1]
        x = self.tok_emb(self.input_ids(tokens)) + self.pos_emb[:t]                # [B, T, W]
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        for block in self.blocks:
            q, k, v = block.qkv_heads(x)
            x = block.finish(x, attention(q, k, v, causal))
        return self.head(self.norm(x))

    def step(self, token: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor):
        """One position: token int [B], pos int [1], caches [L, B, H, max_len, Dh]
        -> logits [B, k], updated caches."""
        pos = pos.reshape(1)
        slots = torch.arange(self.max_len, device=token.device, dtype=pos.dtype)   # [max_len]
        ids = token + (pos > 0).to(token.dtype) * self.label_ids                   # [B]
        x = self.tok_emb(ids) + self.pos_emb.index_select(0, pos)                   # [B, W]
        write = (slots == pos)[:, None]                                             # [max_len, 1] bool
        visible = (slots <= pos)[None, None, None, :]                              # [1, 1, 1, max_len]
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            q, k, v = block.qkv_heads_1(x)                                          # [B, H, 1, Dh]
            kc = torch.where(write, k, k_cache[i])                                  # masked blend (a select)
            vc = torch.where(write, v, v_cache[i])
            x = block.finish_1(x, attention(q, kc, vc, visible))
            new_k.append(kc)
            new_v.append(vc)
        logits = self.head(self.norm(x))                                            # [B, k]
        return logits, torch.stack(new_k), torch.stack(new_v)
