"""Prior first, then the ODE: DisCo-Diff sampling over any backend's graphs, in numpy.

`Pipeline.sample(draws, ...)` draws the m latent tokens with the prior (KV-cache step graph, or the
recompute graph), then solves the probability-flow ODE with the denoiser graph, optionally with
classifier-free guidance over the latents. Solvers, schedule, token picking and the per-sample draws
are the same code the PyTorch reference sampler runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .draws import Draws, churn_noise
from .schedule import sigma_steps
from .solvers import solve
from .tokens import sample_tokens


@dataclass
class ModelMeta:
    data_shape: tuple[int, ...]
    m: int
    k: int
    num_classes: int
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    @property
    def null_label(self) -> int:
        return self.num_classes

    @classmethod
    def from_manifest(cls, man: dict) -> "ModelMeta":
        e = man["edm"]
        return cls(tuple(man["data_shape"]), man["m"], man["k"], man["num_classes"],
                   e["sigma_min"], e["sigma_max"], e["rho"])


class Pipeline:
    def __init__(self, backend, meta: ModelMeta, denoiser: str = "denoiser"):
        self.backend, self.meta, self.denoiser = backend, meta, denoiser
        self.cache_spec = None
        if meta.m and backend.has("prior_step"):
            shape = next(t["shape"] for t in backend.specs["prior_step"]["inputs"] if t["name"] == "k_cache")
            self.cache_spec = shape  # [L, "B", H, T, Dh]

    # ---------------------------------------------------------------------------------- prior
    def prior_step_fn(self, batch: int, use_cache: bool = True):
        """`step(prev int32 [B], pos) -> logits [B, k]` over the KV-cache or the recompute graph."""
        run = self.backend.run
        if use_cache:
            shape = tuple(batch if d == "B" else d for d in self.cache_spec)
            state = {"k_cache": np.zeros(shape, np.float32), "v_cache": np.zeros(shape, np.float32)}

            def step(prev: np.ndarray, pos: int) -> np.ndarray:
                out = run("prior_step", {"token": np.ascontiguousarray(prev, np.int32),
                                         "pos": np.array([pos], np.int32), **state})
                state["k_cache"], state["v_cache"] = out["k_cache_out"], out["v_cache_out"]
                return out["logits"]
        else:
            seq = np.zeros((batch, self.meta.m), np.int32)  # full buffer; the causal mask hides the tail

            def step(prev: np.ndarray, pos: int) -> np.ndarray:
                seq[:, pos] = prev
                return run("prior_recompute", {"tokens": seq})["logits"][:, pos]

        return step

    def tokens(self, d: Draws, temperature: float = 1.0, top_k: int = 0, use_cache: bool = True) -> np.ndarray:
        if not self.meta.m:
            return np.zeros((len(d.seeds), 0), np.int32)
        return sample_tokens(self.prior_step_fn(len(d.seeds), use_cache), d.labels, d.u, temperature, top_k)

    # ---------------------------------------------------------------------------------- denoiser
    def denoise_fn(self, tokens: np.ndarray, labels: np.ndarray, guidance: float = 1.0):
        """`D(x, t)` over the denoiser graph; with guidance != 1, D = D(x|null) + w (D(x|z) - D(x|null)),
        both halves in one call of batch 2B."""
        meta, run, name = self.meta, self.backend.run, self.denoiser
        guided = meta.m > 0 and guidance != 1.0
        cond: dict[str, np.ndarray] = {}
        if meta.m:
            cond["tokens"] = np.concatenate([tokens, np.full_like(tokens, meta.k)]) if guided else tokens
        if meta.num_classes:
            cond["class_labels"] = np.concatenate([labels, labels]) if guided else labels
        cond = {k: np.ascontiguousarray(v, np.int32) for k, v in cond.items()}

        def D(x: np.ndarray, t: float) -> np.ndarray:
            xin = np.concatenate([x, x]) if guided else x
            sigma = np.full(xin.shape[0], t, np.float32)
            out = run(name, {"x": np.ascontiguousarray(xin, np.float32), "sigma": sigma, **cond})["denoised"]
            if not guided:
                return out
            c, u = out[: len(x)], out[len(x):]
            return u + np.float32(guidance) * (c - u)

        return D

    # ---------------------------------------------------------------------------------- both
    def sample(self, d: Draws, *, steps: int = 18, solver: str = "heun", temperature: float = 1.0,
               top_k: int = 0, guidance: float = 1.0, churn: float = 0.0, use_cache: bool = True,
               tokens: np.ndarray | None = None, callback=None) -> tuple[np.ndarray, np.ndarray]:
        """One batch of draws -> (samples float32 [B, *data_shape], tokens int32 [B, m])."""
        meta = self.meta
        if tokens is None:
            tokens = self.tokens(d, temperature, top_k, use_cache)
        sigmas = sigma_steps(steps, meta.sigma_min, meta.sigma_max, meta.rho)
        x = d.noise * np.float32(sigmas[0])
        x = solve(solver, self.denoise_fn(tokens, d.labels, guidance), x, sigmas, churn=churn,
                  churn_noise=lambda i: churn_noise(d.seeds, i, meta.data_shape), callback=callback)
        return x, tokens
