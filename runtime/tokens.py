"""Autoregressive sampling of the m latent tokens from the prior, shared by every backend.

`step(prev_token int32 [B], pos int) -> logits [B, k]` is the backend's prior (it keeps its own KV cache
or recomputes); position 0 is fed the class label. Each token is picked by inverse CDF from the
sample's own uniforms (`draws.prior_uniforms`), so backends with matching logits pick matching tokens.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .draws import categorical


def sample_tokens(step: Callable[[np.ndarray, int], np.ndarray], labels: np.ndarray, u: np.ndarray,
                  temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
    """labels int32 [B], u float64 [B, m] -> tokens int32 [B, m]."""
    b, m = u.shape
    tokens = np.zeros((b, m), np.int32)
    prev = np.asarray(labels, np.int32)
    for pos in range(m):
        tokens[:, pos] = categorical(step(prev, pos), u[:, pos], temperature, top_k)
        prev = tokens[:, pos]
    return tokens
