"""The PyTorch reference sampler: the torch networks behind the runtime's model protocol.

`TorchModel` adapts a `DisCoDiff` (or a denoiser variant of it: compiled, mixed fp16, on CUDA) to the
model protocol of `discodiff.runtime.sampling`, so the reference runs the very same sampling core
(draws, token picking, guidance, schedule, solvers) as every runtime backend, and any backend can be
compared with it sample by sample. `open_checkpoint()` gives the runtime's `Pipeline` over a checkpoint;
`sample()` is the reference loop over it that tests and benchmarks use.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from discodiff.networks import DisCoDiff
from discodiff.runtime.contract import ModelMeta
from discodiff.runtime.draws import Draws
from discodiff.runtime.pipeline import Pipeline, Samples
from discodiff.runtime.schedule import sigma_steps


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
        self.denoiser = denoiser if denoiser is not None else model.denoiser
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


def open_checkpoint(path, device: str | torch.device = "cpu") -> Pipeline:
    """The Python object of the runtime over a checkpoint's torch networks (the PyTorch reference):
    `open_checkpoint("runs/shapes/model.safetensors")(range(8), steps=18) -> Samples`."""
    from discodiff.checkpoint import load_model

    model = load_model(path)[0].eval().to(device)
    return Pipeline(TorchModel(model, device), name=str(path))


@torch.no_grad()
def sample(model: DisCoDiff, seeds=None, *, batch: int = 64, device: str | torch.device = "cpu",
           class_label: int | None = None, draws: Draws | None = None, tokens: np.ndarray | None = None,
           steps: int = 18, solver: str = "heun", sigmas: np.ndarray | None = None,
           recompute_prior: bool = False, progress: Callable[[int], None] | None = None, **options) -> Samples:
    """Sample `seeds` (or the given `draws`) with the torch networks through the runtime's Pipeline;
    `tokens` [n, m] skips the prior (e.g. encoder tokens). `steps` EDM rho levels unless `sigmas` are
    given; `options` are the Pipeline's (guidance, churn, temperature, top_k)."""
    tm = TorchModel(model, device)
    if sigmas is None:
        sigmas = sigma_steps(steps, tm.meta.sigma_min, tm.meta.sigma_max, tm.meta.rho)
    pipe = Pipeline(tm, recompute_prior=recompute_prior)
    parts = []
    for part in pipe.stream(seeds, draws=draws, batch=batch, class_label=class_label, solver=solver, sigmas=sigmas,
                            tokens=None if tokens is None or not tm.meta.m else tokens, nonfinite="keep", **options):
        parts.append(part)
        if progress is not None:
            progress(len(part))
    return Samples.concatenate(parts)
