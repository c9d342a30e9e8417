"""Token picking: the m latent tokens drawn autoregressively from the prior, shared by every backend.

`step(prev_token int32 [B], pos int) -> logits [B, k]` is a model's prior (it keeps its own KV cache or
recomputes); position 0 is fed the class label (the null label when unconditional). Each token is
picked by inverse CDF from the sample's own uniforms (`draws.prior_uniforms`), in float64, so backends
whose logits agree to ~1e-6 pick the same tokens.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def categorical(logits: np.ndarray, u: np.ndarray, temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
    """Pick one code per row by inverse CDF: logits [n, k], u [n] in [0, 1) -> int32 [n].

    Computed in float64 from the given logits so that backends whose logits agree to ~1e-6 pick the
    same codes. temperature 0 picks the arg-max; top_k > 0 keeps only the k most likely codes.
    """
    logits = np.asarray(logits, np.float64)
    if temperature <= 0:
        return logits.argmax(axis=1).astype(np.int32)
    z = logits / temperature
    if 0 < top_k < z.shape[1]:
        kth = np.sort(z, axis=1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    idx = (cdf <= np.asarray(u, np.float64)[:, None]).sum(axis=1)
    return np.minimum(idx, z.shape[1] - 1).astype(np.int32)



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
