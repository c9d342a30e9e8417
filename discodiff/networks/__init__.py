"""The three DisCo-Diff networks, held together by `DisCoDiff`."""
from __future__ import annotations

from torch import nn

from discodiff.config import ModelConfig
from discodiff.networks.denoiser import Denoiser, to_mixed_fp16
from discodiff.networks.encoder import gumbel_weights, make_encoder
from discodiff.networks.prior import Prior

__all__ = ["DisCoDiff", "Denoiser", "Prior", "gumbel_weights", "to_mixed_fp16"]


class DisCoDiff(nn.Module):
    """denoiser D(x; sigma, z, y), encoder E(x0) -> logits [B, m, k], prior p(z | y).

    With m = 0 there is no encoder and no prior: a plain EDM model (the baseline).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.denoiser = Denoiser(cfg)
        self.encoder = make_encoder(cfg) if cfg.m else None
        self.prior = Prior(cfg) if cfg.m else None
