"""Every random draw of sampling, made per sample from (seed, stream).

A sample's class label, prior tokens, initial noise and churn noise come from generators seeded by its
own seed and a fixed stream id, never from a shared batch generator. So a sample is the same whatever
the batch size, the backend or the shard it lands in, and the PyTorch reference sampler, which takes
these same draws, can be compared with any backend sample by sample.

Sample i of a run with base seed s has seed s + i (as in EDM's generate.py); its files are named by it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STREAM_LABEL, STREAM_PRIOR, STREAM_NOISE, STREAM_CHURN = 0, 1, 2, 3


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


def class_labels(seeds: np.ndarray, num_classes: int) -> np.ndarray:
    """int32 [n]: one uniformly drawn class per sample."""
    return np.array([_rng(s, STREAM_LABEL).integers(num_classes) for s in seeds], np.int32)


def prior_uniforms(seeds: np.ndarray, m: int) -> np.ndarray:
    """float64 [n, m]: the uniforms that pick each latent token by inverse CDF."""
    return np.stack([_rng(s, STREAM_PRIOR).random(m) for s in seeds]) if m else np.zeros((len(seeds), 0))


def initial_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [n, *shape] standard normal; the solver scales it by sigma_max."""
    return np.stack([_rng(s, STREAM_NOISE).standard_normal(shape) for s in seeds]).astype(np.float32)


def churn_noise(seeds: np.ndarray, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [n, *shape]: the fresh noise of stochastic step `step` (EDM Alg. 2, S_churn > 0)."""
    return np.stack([_rng(s, STREAM_CHURN, step).standard_normal(shape) for s in seeds]).astype(np.float32)


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


@dataclass
class Draws:
    """Everything random about samples `seeds`, drawn up front (churn noise is drawn per step)."""

    seeds: np.ndarray     # int64 [n]
    labels: np.ndarray    # int32 [n]; the prior's null label (= num_classes) when unconditional
    u: np.ndarray         # float64 [n, m], prior uniforms
    noise: np.ndarray     # float32 [n, *data_shape], standard normal (x_T = sigma_max * noise)

    def take(self, idx: slice | np.ndarray) -> "Draws":
        return Draws(self.seeds[idx], self.labels[idx], self.u[idx], self.noise[idx])


def draw(seeds, data_shape: tuple[int, ...], m: int, num_classes: int, class_label: int | None = None) -> Draws:
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    if (seeds < 0).any():
        raise ValueError("seeds must be >= 0")
    if num_classes == 0:
        labels = np.zeros(len(seeds), np.int32)  # the null label of an unconditional prior
    elif class_label is None:
        labels = class_labels(seeds, num_classes)
    else:
        labels = np.full(len(seeds), class_label, np.int32)
    return Draws(seeds, labels, prior_uniforms(seeds, m), initial_noise(seeds, tuple(data_shape)))
