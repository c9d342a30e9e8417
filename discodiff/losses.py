"""The DisCo-Diff objective (Xu et al. 2024, Sec. 3.2), in one place as EDM keeps training/loss.py.

Stage 1, denoiser and encoder end to end: the EDM loss (Karras et al. 2022, Eq. 2 and Table 1) of the
denoiser conditioned on Gumbel-softmax relaxed latents from the encoder of the clean example, plus
(not in the paper, see README "Deviations") a code-balance term that keeps codes from collapsing.
Stage 2: cross-entropy of the autoregressive prior on the frozen encoder's tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from discodiff.networks import gumbel_weights


def sample_sigma(n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """The training noise levels: ln(sigma) ~ N(P_mean, P_std^2), [n]."""
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, Eq. 8 / Table 1 (= 1 / c_out^2)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoise, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, sigma_data: float,
             **cond) -> torch.Tensor:
    """Per-example EDM loss [B]: lambda(sigma) * mean ||D(y + sigma n; sigma) - y||^2."""
    bshape = (-1,) + (1,) * (y.ndim - 1)
    D = denoise(y + sigma.reshape(bshape) * noise, sigma, **cond)
    err = (D - y).square().flatten(1).mean(dim=1)
    return loss_weight(sigma, sigma_data) * err


def code_imbalance(logits: torch.Tensor) -> torch.Tensor:
    """1 - H(p_bar)/log k, averaged over latents, where p_bar [m, k] is the batch-mean code
    distribution: 0 when the batch uses all codes evenly, 1 when it uses one. Keeps codes from
    collapsing without asking any single example to be uncertain."""
    p_bar = logits.softmax(-1).mean(0)                                              # [m, k]
    entropy = -(p_bar * p_bar.clamp_min(1e-12).log()).sum(-1)                       # [m]
    return (1 - entropy / math.log(logits.shape[-1])).mean()


def stage1_loss(denoiser, encoder, cfg, y: torch.Tensor, labels: torch.Tensor | None, sigma: torch.Tensor,
                noise: torch.Tensor, gen: torch.Generator, tau: float, balance: float):
    """Mean stage-1 loss over the batch y [B, *shape] and the encoder's logits [B, m, k] (None when m = 0).

    The encoder sees the clean y; its latents are relaxed with Gumbel-softmax at temperature tau (hard
    one-hot with straight-through gradients if cfg.straight_through) and replaced by the null code with
    probability cfg.latent_dropout, which teaches the unconditional denoiser guidance needs."""
    weights, logits = None, None
    if encoder is not None:
        logits = encoder(y)                                                         # [B, m, k]
        weights = gumbel_weights(logits, tau, cfg.straight_through, cfg.latent_dropout, gen)
    loss = edm_loss(denoiser, y, sigma, noise, cfg.sigma_data, latent_weights=weights, class_labels=labels).mean()
    if logits is not None and balance > 0:
        loss = loss + balance * code_imbalance(logits)
    return loss, logits


def prior_loss(prior, labels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the tokens z [B, m] given labels [B] (the null label when unconditional): the
    prior reads (label, z_1, ..., z_{m-1}) and predicts z_1..z_m, causally."""
    logits = prior(torch.cat([labels[:, None], z[:, :-1]], dim=1))                 # [B, m, k]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), z.reshape(-1))


def gumbel_tau(step: int, total: int, start: float, end: float) -> float:
    """Geometric annealing of the Gumbel-softmax temperature from `start` to `end` (constant if start = 0)."""
    if start <= 0:
        return end
    return start * (end / start) ** min(step / max(total - 1, 1), 1.0)
