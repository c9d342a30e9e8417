"""What gets exported: one I/O contract per network (names, dtypes, shapes, batch range, sample input)
and the thin torch wrappers whose forward is exactly that contract.

The same `GraphSpec` drives the ONNX export, the TensorRT optimisation profile, the manifest entry
and the parity checks, so they cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..networks import DisCoDiff


@dataclass
class TensorSpec:
    name: str
    dtype: str                        # numpy dtype name: float32, int32
    shape: list                       # "B" marks the batch axis; every other axis is static

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.shape)


@dataclass
class GraphSpec:
    name: str                         # manifest key and file stem
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch: dict                       # {"min", "opt", "max"}
    precision: str = "fp32"           # "fp32" | "mixed-fp16"
    extra: dict = field(default_factory=dict)

    def sample_inputs(self, batch: int, rng: np.random.Generator, ranges: dict | None = None) -> dict[str, np.ndarray]:
        """Random inputs of this contract; integer inputs drawn from `ranges[name] = (low, high)`."""
        out = {}
        for t in self.inputs:
            shape = t.concrete(batch)
            if t.dtype.startswith("int"):
                lo, hi = (ranges or {}).get(t.name, (0, 2))
                out[t.name] = rng.integers(lo, hi, size=shape).astype(t.dtype)
            else:
                out[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return out


# ---------------------------------------------------------------------------------------------
# Wrappers (forward = the graph's contract)


class DenoiserGraph(nn.Module):
    """x [B, *shape] f32, sigma [B] f32, tokens [B, m] i32, class_labels [B] i32 -> denoised f32.
    tokens / class_labels are absent from the graph when m = 0 / the model is unconditional."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x, sigma, tokens=None, class_labels=None):
        return self.denoiser(x, sigma, tokens=tokens, class_labels=class_labels)


class EncoderGraph(nn.Module):
    """x [B, *shape] f32 -> logits [B, m, k] f32, tokens [B, m] i32 (arg-max)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        logits = self.encoder(x)
        return logits, logits.argmax(-1).to(torch.int32)


class PriorStepGraph(nn.Module):
    """token [B] i32, pos [1] i32, k_cache/v_cache [L, B, H, T, Dh] f32 -> logits [B, k], caches."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior

    def forward(self, token, pos, k_cache, v_cache):
        return self.prior.step(token, pos, k_cache, v_cache)


class PriorRecomputeGraph(nn.Module):
    """tokens [B, T] i32 (label, z_1..z_{T-1}) -> logits [B, T, k], causal: no cache."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior

    def forward(self, tokens):
        return self.prior(tokens)


# ---------------------------------------------------------------------------------------------
# Specs


def _batch(max_batch: int, opt: int) -> dict:
    return {"min": 1, "opt": max(1, min(opt, max_batch)), "max": max_batch}


def graph_specs(model: DisCoDiff, max_batch: int = 64, opt_batch: int = 32) -> dict[str, tuple[GraphSpec, nn.Module]]:
    """Every graph of a bundle, with its wrapper. The denoiser's range is doubled for guidance (2B)."""
    cfg = model.cfg
    shape = list(cfg.data_shape)
    specs: dict[str, tuple[GraphSpec, nn.Module]] = {}
    den_in = [TensorSpec("x", "float32", ["B", *shape]), TensorSpec("sigma", "float32", ["B"])]
    if cfg.m:
        den_in.append(TensorSpec("tokens", "int32", ["B", cfg.m]))
    if cfg.num_classes:
        den_in.append(TensorSpec("class_labels", "int32", ["B"]))
    den_out = [TensorSpec("denoised", "float32", ["B", *shape])]
    den_batch = _batch(2 * max_batch, opt_batch)
    wrapper = DenoiserGraph(model.denoiser)
    specs["denoiser"] = (GraphSpec("denoiser", den_in, den_out, den_batch), wrapper)
    specs["denoiser_fp16"] = (GraphSpec("denoiser_fp16", den_in, den_out, den_batch, precision="mixed-fp16"), None)
    if cfg.m:
        p = model.prior
        cache_shape = [p.layers, "B", p.heads, p.max_len, p.head_dim]   # [L, B, H, T, Dh]
        specs["encoder"] = (GraphSpec(
            "encoder", [TensorSpec("x", "float32", ["B", *shape])],
            [TensorSpec("logits", "float32", ["B", cfg.m, cfg.k]), TensorSpec("tokens", "int32", ["B", cfg.m])],
            _batch(max_batch, opt_batch)), EncoderGraph(model.encoder))
        specs["prior_step"] = (GraphSpec(
            "prior_step",
            [TensorSpec("token", "int32", ["B"]), TensorSpec("pos", "int32", [1]),
             TensorSpec("k_cache", "float32", cache_shape), TensorSpec("v_cache", "float32", cache_shape)],
            [TensorSpec("logits", "float32", ["B", cfg.k]), TensorSpec("k_cache_out", "float32", cache_shape),
             TensorSpec("v_cache_out", "float32", cache_shape)],
            _batch(max_batch, opt_batch),
            extra={"cache": {"layers": p.layers, "heads": p.heads, "max_len": p.max_len, "head_dim": p.head_dim},
                   "null_label": p.null_label}), PriorStepGraph(p))
        specs["prior_recompute"] = (GraphSpec(
            "prior_recompute", [TensorSpec("tokens", "int32", ["B", p.max_len])],
            [TensorSpec("logits", "float32", ["B", p.max_len, cfg.k])],
            _batch(max_batch, opt_batch), extra={"null_label": p.null_label}), PriorRecomputeGraph(p))
    return specs
