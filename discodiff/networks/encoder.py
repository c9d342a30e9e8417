"""The encoder E_phi(x0) -> logits over the m discrete latents, [B, m, k] (Xu et al. 2024, Sec. 3).

Images: a ViT whose m learnable classification tokens read the patches; vectors: an MLP. Trained end
to end with the denoiser through a Gumbel-softmax relaxation (`gumbel_weights`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from discodiff.config import ModelConfig
from discodiff.runtime.contract import null_code
from discodiff.networks.layers import LayerNorm32, TransformerBlock


class MLPEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e, (dim,) = cfg.encoder, cfg.data_shape
        layers: list[nn.Module] = [nn.Linear(dim, e.width), nn.SiLU()]
        for _ in range(e.depth - 1):
            layers += [nn.Linear(e.width, e.width), nn.SiLU()]
        layers.append(nn.Linear(e.width, cfg.m * cfg.k))
        self.net = nn.Sequential(*layers)
        self.m, self.k, self.scale = cfg.m, cfg.k, 1.0 / cfg.sigma_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale).view(-1, self.m, self.k)  # [B, m, k]


class ViTEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e = cfg.encoder
        c, h, w = cfg.data_shape
        if h % e.patch or w % e.patch:
            raise ValueError(f"image size {h}x{w} is not divisible by the encoder patch {e.patch}")
        n_patches = (h // e.patch) * (w // e.patch)
        self.patchify = nn.Conv2d(c, e.width, e.patch, stride=e.patch)      # [B, W, H/p, W/p]
        self.pos = nn.Parameter(torch.randn(1, n_patches, e.width) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, cfg.m, e.width) * 0.02)       # m classification tokens
        self.blocks = nn.ModuleList(TransformerBlock(e.width, e.heads) for _ in range(e.depth))
        self.norm = LayerNorm32(e.width)
        self.head = nn.Linear(e.width, cfg.k)
        self.m, self.scale = cfg.m, 1.0 / cfg.sigma_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patchify(x * self.scale).flatten(2).transpose(1, 2) + self.pos  # [B, N, W]
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), p], dim=1)        # [B, m + N, W]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, : self.m]))                             # [B, m, k]


def make_encoder(cfg: ModelConfig) -> nn.Module:
    return ViTEncoder(cfg) if cfg.is_image else MLPEncoder(cfg)


def gumbel_weights(logits: torch.Tensor, tau: float, hard: bool, dropout: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot latents with latent dropout: logits [B, m, k] -> weights [B, m, k+1].

    Column k is the null code: with probability `dropout` a sample's latents are all replaced by it
    (the model then learns the unconditional denoiser that classifier-free guidance needs).
    """
    b, m, k = logits.shape
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1 - 1e-10)
    y = F.softmax((logits - (-u.log()).log()) / tau, dim=-1)             # Gumbel-softmax [B, m, k]
    if hard:  # straight-through: one-hot forward, soft gradient
        y = F.one_hot(y.argmax(-1), k).to(y.dtype) - y.detach() + y
    w = F.pad(y, (0, 1))                                                  # [B, m, k+1]
    if dropout > 0:
        drop = torch.rand(b, generator=generator, device=logits.device) < dropout
        null = F.one_hot(torch.full((m,), null_code(k), device=logits.device), k + 1).to(w.dtype)  # [m, k+1]
        w = torch.where(drop[:, None, None], null, w)
    return w
