"""EDM preconditioning (Karras et al. 2022, Table 1): the four coefficients the denoiser wraps its
backbone in. The training noise distribution and the loss live in `discodiff.losses`; the sampling
range and schedule, torch-free, in `discodiff.runtime.contract` and `discodiff.runtime.schedule`.
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
