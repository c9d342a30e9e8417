"""EDM formulas (Karras et al. 2022): preconditioning, training noise distribution and loss weight.
Shared by training, the reference sampler and export. The sampling schedule lives, torch-free, in
`discodiff.runtime.schedule`.
"""
from __future__ import annotations

import torch


def precond_coefficients(sigma: torch.Tensor, sigma_data: float):
    """Table 1: c_skip, c_out, c_in, c_noise for sigma [B] (float32), each [B]."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1 / (sd2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, Eq. 8 / Table 1."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """ln(sigma) ~ N(P_mean, P_std^2), [n]."""
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


def edm_loss(denoise, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, sigma_data: float,
             **cond) -> torch.Tensor:
    """Per-example EDM loss [B]: lambda(sigma) * mean ||D(y + sigma n; sigma) - y||^2."""
    bshape = (-1,) + (1,) * (y.ndim - 1)
    D = denoise(y + sigma.reshape(bshape) * noise, sigma, **cond)
    err = (D - y).square().flatten(1).mean(dim=1)
    return loss_weight(sigma, sigma_data) * err
