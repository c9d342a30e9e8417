"""The PyTorch reference sampler: prior tokens, then the ODE solve, for a list of per-sample seeds.

A function, not a method: it takes the three networks, the seeds (or explicit `Draws`) and the
options, and runs the same solver code and the same per-sample draws as the runtime
(`discodiff.runtime.{draws,solvers,tokens}`), with torch networks behind the `denoise` and prior
`step` callables. So any backend can be compared with it sample by sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .networks import DisCoDiff
from .runtime import draws as draws_mod
from .runtime.schedule import sigma_steps
from .runtime.solvers import solve
from .runtime.tokens import sample_tokens


@dataclass
class Samples:
    x: np.ndarray          # float32 [n, *data_shape]
    tokens: np.ndarray     # int32 [n, m]
    labels: np.ndarray     # int32 [n] (the prior's null label when unconditional)
    seeds: np.ndarray      # int64 [n]


def prior_step_fn(prior, batch: int, device, use_cache: bool = True) -> Callable[[np.ndarray, int], np.ndarray]:
    """A `step(prev int32 [B], pos) -> logits [B, k]` over the torch prior, with its KV cache or by
    recomputing all positions each step (the baseline)."""
    state = {"k": torch.zeros(prior.cache_shape(batch), device=device)}
    state["v"] = torch.zeros_like(state["k"])
    seq = torch.zeros(batch, prior.max_len, dtype=torch.int32, device=device)

    @torch.no_grad()
    def step(prev: np.ndarray, pos: int) -> np.ndarray:
        token = torch.from_numpy(np.ascontiguousarray(prev, np.int32)).to(device)
        if use_cache:
            logits, state["k"], state["v"] = prior.step(token, torch.tensor([pos], device=device), state["k"], state["v"])
        else:
            seq[:, pos] = token
            logits = prior(seq[:, : pos + 1])[:, pos]
        return logits.float().cpu().numpy()

    return step


def denoise_fn(denoiser, tokens: torch.Tensor | None, labels: torch.Tensor | None, guidance: float, k: int):
    """`D(x, t)` for the solver; classifier-free guidance over the latents when guidance != 1:
    D = D(x | null) + w * (D(x | z) - D(x | null)), both halves in one call of batch 2B."""
    guided = tokens is not None and guidance != 1.0
    if guided:
        tokens = torch.cat([tokens, torch.full_like(tokens, k)])
        labels = torch.cat([labels, labels]) if labels is not None else None

    def D(x: torch.Tensor, t: float) -> torch.Tensor:
        xin = torch.cat([x, x]) if guided else x
        sigma = torch.full((xin.shape[0],), t, dtype=torch.float32, device=x.device)
        out = denoiser(xin, sigma, tokens=tokens, class_labels=labels)
        if not guided:
            return out
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return D


@torch.no_grad()
def sample(
    model: DisCoDiff,
    seeds=None,
    *,
    steps: int = 18,
    solver: str = "heun",
    class_label: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    guidance: float = 1.0,
    churn: float = 0.0,
    batch: int = 64,
    device: str | torch.device = "cpu",
    draws: draws_mod.Draws | None = None,
    tokens: np.ndarray | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Samples:
    """Sample `seeds` (or the given `draws`). `tokens` [n, m] skips the prior (e.g. encoder tokens)."""
    cfg = model.cfg
    if draws is None:
        draws = draws_mod.draw(seeds, cfg.data_shape, cfg.m, cfg.num_classes, class_label)
    sigmas = sigma_steps(steps)
    n = len(draws.seeds)
    xs, toks = [], []
    for start in range(0, n, batch):
        d = draws.take(slice(start, start + batch))
        b = len(d.seeds)
        if cfg.m and tokens is None:
            tok = sample_tokens(prior_step_fn(model.prior, b, device, use_cache), d.labels, d.u, temperature, top_k)
        else:
            tok = np.asarray(tokens[start:start + b], np.int32) if cfg.m else np.zeros((b, 0), np.int32)
        tok_t = torch.from_numpy(tok).to(device) if cfg.m else None
        lab_t = torch.from_numpy(d.labels).to(device) if cfg.num_classes else None
        D = denoise_fn(model.denoiser, tok_t, lab_t, guidance, cfg.k)
        x = torch.from_numpy(d.noise).to(device) * float(sigmas[0])

        def churn_noise(i: int, seeds=d.seeds) -> torch.Tensor:
            return torch.from_numpy(draws_mod.churn_noise(seeds, i, cfg.data_shape)).to(device)

        x = solve(solver, D, x, sigmas, churn=churn, churn_noise=churn_noise)
        xs.append(x.float().cpu().numpy())
        toks.append(tok)
        if progress is not None:
            progress(b)
    return Samples(np.concatenate(xs), np.concatenate(toks), draws.labels, draws.seeds)
