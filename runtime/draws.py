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

from discodiff.runtime.contract import ModelMeta

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


@dataclass
class Draws:
    """Everything random about samples `seeds`, drawn up front (churn noise is drawn per step)."""

    seeds: np.ndarray     # int64 [n]
    labels: np.ndarray    # int32 [n]; the prior's null label (= num_classes) when unconditional
    u: np.ndarray         # float64 [n, m], prior uniforms
    noise: np.ndarray     # float32 [n, *data_shape], standard normal (x_T = sigma_max * noise)

    def take(self, idx: slice | np.ndarray) -> "Draws":
        """The draws of the samples `idx` (a slice or indices), e.g. one batch."""
        return Draws(self.seeds[idx], self.labels[idx], self.u[idx], self.noise[idx])


def draw(seeds, meta: ModelMeta, class_label: int | np.ndarray | None = None) -> Draws:
    """The draws of samples `seeds` for a model: class labels (drawn per seed; or `class_label` for all;
    or one per seed, -1 meaning drawn; the prior's null label when unconditional), prior uniforms and
    initial noise. A given label never changes the seed's other draws."""
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    if (seeds < 0).any():
        raise ValueError("seeds must be >= 0")
    if meta.num_classes == 0:
        labels = np.full(len(seeds), meta.null_label, np.int32)
    elif class_label is None:
        labels = class_labels(seeds, meta.num_classes)
    elif np.ndim(class_label) == 0:
        labels = np.full(len(seeds), class_label, np.int32)
    else:
        given = np.asarray(class_label, np.int64).reshape(-1)
        labels = np.where(given >= 0, given, class_labels(seeds, meta.num_classes)).astype(np.int32)
    return Draws(seeds, labels, prior_uniforms(seeds, meta.m), initial_noise(seeds, tuple(meta.data_shape)))
