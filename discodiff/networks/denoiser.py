"""The DisCo-Diff denoiser D_theta(x; sigma, z, y): EDM preconditioning around a backbone.

    D_x = c_skip(sigma) * x + c_out(sigma) * F_x(c_in(sigma) * x; c_noise(sigma), z, y)

(Karras et al. 2022, Eq. 7 and Table 1). This module is also the export boundary: the ONNX denoiser
graph is exactly this forward, preconditioning included, with inputs x, sigma, tokens, class_labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from discodiff.config import ModelConfig
from discodiff.edm import precond_coefficients
from discodiff.networks.backbones import MLPBackbone, UNetBackbone
from discodiff.networks.layers import FourierFeatures, LatentEmbedding


class Denoiser(nn.Module):
    # Submodules that stay float32 in the mixed-precision model (the noise embedding).
    FP32_MODULES = ("noise_mlp",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.denoiser
        e = d.emb_dim
        self.sigma_data = float(cfg.sigma_data)
        self.noise_feat = FourierFeatures(e)
        self.noise_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.class_emb = nn.Embedding(cfg.num_classes, e) if cfg.num_classes else None
        self.latent_emb = LatentEmbedding(cfg.m, cfg.k, e) if cfg.m else None
        self.latent_global = nn.Linear(cfg.m * e, e) if cfg.m else None
        self.register = nn.Parameter(torch.zeros(1, 1, e))   # always-present context token
        ctx_tokens = cfg.m + 1
        if d.backbone == "mlp":
            self.backbone = MLPBackbone(cfg.data_shape[0], ctx_tokens, d)
        elif d.backbone == "unet":
            self.backbone = UNetBackbone(cfg.data_shape[0], ctx_tokens, d)
        else:
            raise ValueError(f"unknown backbone {d.backbone!r}")

    @property
    def trunk_dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype  # the input layer: Linear or Conv

    def forward(
        self,
        x: torch.Tensor,                             # float32 [B, *data_shape], noisy data
        sigma: torch.Tensor,                         # float32 [B]
        tokens: torch.Tensor | None = None,          # int [B, m], k = null (dropped latent)
        class_labels: torch.Tensor | None = None,    # int [B]
        latent_weights: torch.Tensor | None = None,  # float [B, m, k+1], soft tokens (training)
    ) -> torch.Tensor:
        dt = self.trunk_dtype
        x = x.float()
        sigma = sigma.float().reshape(-1)
        c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, self.sigma_data)  # each [B]
        bshape = (-1,) + (1,) * (x.ndim - 1)

        emb = self.noise_mlp(self.noise_feat(c_noise)).to(dt)                  # [B, E], float32 -> trunk
        if self.class_emb is not None:
            emb = emb + self.class_emb(class_labels).to(dt)
        ctx = self.register.to(dt).expand(x.shape[0], -1, -1)                  # [B, 1, E]
        if self.latent_emb is not None:
            z = self.latent_emb(tokens=tokens, weights=latent_weights).to(dt)  # [B, m, E]
            emb = emb + self.latent_global(z.flatten(1))
            ctx = torch.cat([ctx, z], dim=1)                                   # [B, m+1, E]
        F_x = self.backbone((c_in.reshape(bshape) * x).to(dt), F.silu(emb), ctx)
        return c_skip.reshape(bshape) * x + c_out.reshape(bshape) * F_x.float()  # D_x, float32


def to_mixed_fp16(denoiser: Denoiser) -> Denoiser:
    """Convert the trunk's Linear/Conv weights to fp16 in place; norms, embeddings tables and the
    noise-embedding MLP stay float32 (their forwards cast explicitly)."""
    keep = {id(p) for name in Denoiser.FP32_MODULES for p in getattr(denoiser, name).parameters()}
    for module in denoiser.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and id(module.weight) not in keep:
            module.half()
    return denoiser
