"""The PyTorch reference sampler: the torch networks behind the runtime's model protocol.

`TorchModel` adapts a `DisCoDiff` (or a denoiser variant of it: compiled, mixed fp16, on CUDA) to the
model protocol of `discodiff.runtime.sampling`, so the reference runs the very same sampling core
(draws, token picking, guidance, schedule, solvers) as every runtime backend, and any backend can be
compared with it sample by sample. `sample()` is the batch loop over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from discodiff.networks import DisCoDiff
from discodiff.runtime.contract import ModelMeta
from discodiff.runtime.draws import Draws, draw
from discodiff.runtime.sampling import sample_batch


def model_meta(cfg) -> ModelMeta:
    """The sampling facts of a model config (the EDM range is the contract's)."""
    return ModelMeta(tuple(cfg.data_shape), cfg.m, cfg.k, cfg.num_classes, float(cfg.sigma_data))


class TorchModel:
    """The model protocol over torch networks on `device`; `denoiser` overrides model.denoiser (e.g. a
    torch.compile'd or mixed-fp16 copy, or a CUDA-graph replayer with the same call signature)."""

    xp = torch

    def __init__(self, model: DisCoDiff, device: str | torch.device = "cpu", denoiser: Callable | None = None):
        self.net, self.device = model, torch.device(device)
        self.meta = model_meta(model.cfg)
        self.denoiser = denoiser or model.denoiser
        self._cond: tuple = (None, None, None, None)   # last (tokens, labels) numpy -> torch, reused per batch

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    @staticmethod
    def numpy(x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy()

    def _conditioning(self, tokens: np.ndarray, labels: np.ndarray):
        if self._cond[0] is not tokens or self._cond[1] is not labels:
            tok = self.asarray(tokens) if self.meta.m else None
            lab = self.asarray(labels) if self.meta.num_classes else None
            self._cond = (tokens, labels, tok, lab)
        return self._cond[2], self._cond[3]

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: np.ndarray, tokens: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        tok, lab = self._conditioning(tokens, labels)
        return self.denoiser(x, self.asarray(sigma), tokens=tok, class_labels=lab)

    def prior_step(self, batch: int, recompute: bool = False) -> Callable[[np.ndarray, int], np.ndarray]:
        """`step(prev int32 [B], pos) -> logits [B, k]` over the torch prior, with its KV cache or by
        recomputing all positions each step (the baseline)."""
        prior, dev = self.net.prior, self.device
        state = {"k": torch.zeros(prior.cache_shape(batch), device=dev)}
        state["v"] = torch.zeros_like(state["k"])
        seq = torch.zeros(batch, prior.max_len, dtype=torch.int32, device=dev)

        @torch.no_grad()
        def step(prev: np.ndarray, pos: int) -> np.ndarray:
            token = self.asarray(np.ascontiguousarray(prev, np.int32))
            if not recompute:
                p = torch.tensor([pos], dtype=torch.int32, device=dev)
                logits, state["k"], state["v"] = prior.step(token, p, state["k"], state["v"])
            else:
                seq[:, pos] = token
                logits = prior(seq[:, : pos + 1])[:, pos]
            return logits.float().cpu().numpy()

        return step


@dataclass
class Samples:
    x: np.ndarray          # float32 [n, *data_shape]
    tokens: np.ndarray     # int32 [n, m]
    labels: np.ndarray     # int32 [n] (the prior's null label when unconditional)
    seeds: np.ndarray      # int64 [n]


@torch.no_grad()
def sample(model: DisCoDiff, seeds=None, *, batch: int = 64, device: str | torch.device = "cpu",
           class_label: int | None = None, draws: Draws | None = None, tokens: np.ndarray | None = None,
           progress: Callable[[int], None] | None = None, **options) -> Samples:
    """Sample `seeds` (or the given `draws`) with the torch networks; `tokens` [n, m] skips the prior
    (e.g. encoder tokens). `options` are sample_batch's (steps, solver, sigmas, guidance, churn, ...)."""
    tm = TorchModel(model, device)
    if draws is None:
        draws = draw(seeds, tm.meta, class_label)
    xs, toks = [], []
    for start in range(0, len(draws.seeds), batch):
        d = draws.take(slice(start, start + batch))
        tok = None if tokens is None or not tm.meta.m else np.asarray(tokens[start:start + batch], np.int32)
        x, tok = sample_batch(tm, d, tokens=tok, **options)
        xs.append(x)
        toks.append(tok)
        if progress is not None:
            progress(len(d.seeds))
    return Samples(np.concatenate(xs), np.concatenate(toks), draws.labels, draws.seeds)
