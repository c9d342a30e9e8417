"""The one sampling core: prior tokens, then the probability-flow ODE, over any model that speaks the
model protocol. Torch-free; the runtime CLI, the server, export parity, the PyTorch reference sampler
and the benchmarks all run these functions, and differ only in the model adapter they pass.

Model protocol (after k-diffusion's single `model(x, sigma, **extra)` contract):

    meta: ModelMeta                  data shape, m, k, classes, EDM range
    xp                               array module of the ODE state (numpy, or torch for the reference):
                                     the core uses only its `concatenate`
    asarray(a: np.ndarray)           numpy -> state array (on the model's device)
    numpy(x) -> np.ndarray           state array -> numpy
    denoise(x, sigma, tokens, labels) -> D(x; sigma, z, y)
        x [B, *data_shape] state array; sigma float32 [B], tokens int32 [B, m], labels int32 [B] numpy
    prior_step(batch, recompute=False) -> step(prev int32 [B], pos) -> logits [B, k] numpy
        a fresh autoregressive state (KV cache, or the recompute baseline) for `batch` sequences

Adapters: `discodiff.runtime.model.BundleModel` (a bundle's graphs on any backend) and
`discodiff.sampling.TorchModel` (the torch networks). Randomness comes in as per-sample `Draws`.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from discodiff.runtime.draws import Draws, churn_noise
from discodiff.runtime.schedule import sigma_steps
from discodiff.runtime.solvers import solve
from discodiff.runtime.tokens import sample_tokens


def denoiser_fn(model, tokens: np.ndarray, labels: np.ndarray, guidance: float = 1.0) -> Callable:
    """The solver's `D(x, t)` for one batch (t a float, broadcast to sigma [B]). With guidance != 1,
    classifier-free guidance over the latents: D = D(x | null) + w (D(x | z) - D(x | null)), both halves
    in one denoiser call of GUIDANCE_BATCH x B (the null half gets the null code for every latent)."""
    meta = model.meta
    guided = meta.m > 0 and guidance != 1.0
    if guided:
        tokens = np.concatenate([tokens, np.full_like(tokens, meta.null_code)])
        labels = np.concatenate([labels, labels])
    tokens, labels = np.ascontiguousarray(tokens, np.int32), np.ascontiguousarray(labels, np.int32)

    def D(x, t: float):
        xin = model.xp.concatenate([x, x]) if guided else x
        out = model.denoise(xin, np.full(len(tokens), t, np.float32), tokens, labels)
        if not guided:
            return out
        b = out.shape[0] // 2
        cond, uncond = out[:b], out[b:]
        return uncond + guidance * (cond - uncond)

    return D


def prior_tokens(model, draws: Draws, temperature: float = 1.0, top_k: int = 0, recompute: bool = False) -> np.ndarray:
    """int32 [B, m]: each sample's latent tokens from the prior and its own uniforms."""
    b = len(draws.seeds)
    if not model.meta.m:
        return np.zeros((b, 0), np.int32)
    return sample_tokens(model.prior_step(b, recompute), draws.labels, draws.u, temperature, top_k)


def sample_batch(model, draws: Draws, *, steps: int = 18, solver: str = "heun", sigmas: np.ndarray | None = None,
                 guidance: float = 1.0, churn: float = 0.0, temperature: float = 1.0, top_k: int = 0,
                 tokens: np.ndarray | None = None, recompute_prior: bool = False,
                 callback: Callable | None = None, timing: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One batch of draws -> (samples float32 [B, *data_shape], tokens int32 [B, m]).

    `sigmas` (float64, ending in 0) overrides the EDM rho schedule of `steps` levels; `tokens` skips the
    prior (e.g. an encoder's tokens). `timing`, if given, accumulates "prior_s" and "ode_s"."""
    meta = model.meta
    t0 = time.perf_counter()
    if tokens is None:
        tokens = prior_tokens(model, draws, temperature, top_k, recompute_prior)
    t1 = time.perf_counter()
    if sigmas is None:
        sigmas = sigma_steps(steps, meta.sigma_min, meta.sigma_max, meta.rho)
    x = model.asarray(draws.noise) * float(sigmas[0])
    x = solve(solver, denoiser_fn(model, tokens, draws.labels, guidance), x, sigmas, churn=churn,
              churn_noise=lambda i: model.asarray(churn_noise(draws.seeds, i, meta.data_shape)), callback=callback)
    x = model.numpy(x)
    if timing is not None:
        timing["prior_s"] = timing.get("prior_s", 0.0) + t1 - t0
        timing["ode_s"] = timing.get("ode_s", 0.0) + time.perf_counter() - t1
    return x, np.asarray(tokens, np.int32)


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """bool [B]: the samples of x [B, ...] holding a NaN or an infinity. Such a sample is never written or
    returned as a success (a huge guidance scale, a damaged graph): callers fail it, naming its seed."""
    x = np.asarray(x)
    return ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
