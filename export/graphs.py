"""What gets exported: one I/O contract per network (`discodiff.runtime.contract.GraphSpec`: names,
dtypes, shapes, valid integer values, batch range) and the thin torch wrappers whose forward is
exactly that contract.

The same spec drives the ONNX export, the TensorRT optimisation profile, the manifest entry, the
backends' input checks and the parity feeds, so they cannot disagree.
"""
from __future__ import annotations

import torch
from torch import nn

from discodiff.networks import DisCoDiff
from discodiff.runtime.contract import GUIDANCE_BATCH, BatchRange, GraphSpec, TensorSpec
from discodiff.sampling import model_meta


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


def _batch(max_batch: int, opt: int) -> BatchRange:
    """1..max_batch, TensorRT's optimum at `opt` (clipped into the range)."""
    return BatchRange(1, max(1, min(opt, max_batch)), max_batch)


def graph_specs(model: DisCoDiff, max_batch: int = 64, opt_batch: int = 32) -> dict[str, tuple[GraphSpec, nn.Module]]:
    """Every graph of a bundle, with its wrapper (None for the fp16 denoiser: made from the fp32 one).
    The denoiser's batch range is GUIDANCE_BATCH x the sampling batch."""
    cfg, meta = model.cfg, model_meta(model.cfg)
    x = TensorSpec("x", "float32", ["B", *cfg.data_shape])
    den_in = [x, TensorSpec("sigma", "float32", ["B"])]
    if cfg.m:
        den_in.append(TensorSpec("tokens", "int32", ["B", cfg.m], meta.code_values))
    if cfg.num_classes:
        den_in.append(TensorSpec("class_labels", "int32", ["B"], meta.label_values))
    den_out = [TensorSpec("denoised", "float32", ["B", *cfg.data_shape])]
    den_batch = _batch(GUIDANCE_BATCH * max_batch, opt_batch)
    specs: dict[str, tuple[GraphSpec, nn.Module | None]] = {
        "denoiser": (GraphSpec("denoiser", den_in, den_out, den_batch), DenoiserGraph(model.denoiser)),
        "denoiser_fp16": (GraphSpec("denoiser_fp16", den_in, den_out, den_batch, precision="mixed-fp16"), None),
    }
    if cfg.m:
        p, batch = model.prior, _batch(max_batch, opt_batch)
        cache = [p.layers, "B", p.heads, p.max_len, p.head_dim]                  # [L, B, H, T, Dh]
        specs["encoder"] = (GraphSpec(
            "encoder", [x], [TensorSpec("logits", "float32", ["B", cfg.m, cfg.k]), TensorSpec("tokens", "int32", ["B", cfg.m])],
            batch), EncoderGraph(model.encoder))
        # position 0 takes a label (0..num_classes, the last the null label), later positions a code
        token = TensorSpec("token", "int32", ["B"], meta.prior_input_values)
        specs["prior_step"] = (GraphSpec(
            "prior_step",
            [token, TensorSpec("pos", "int32", [1], (0, p.max_len - 1)),
             TensorSpec("k_cache", "float32", cache), TensorSpec("v_cache", "float32", cache)],
            [TensorSpec("logits", "float32", ["B", cfg.k]), TensorSpec("k_cache_out", "float32", cache),
             TensorSpec("v_cache_out", "float32", cache)], batch), PriorStepGraph(p))
        specs["prior_recompute"] = (GraphSpec(
            "prior_recompute", [TensorSpec("tokens", "int32", ["B", p.max_len], meta.prior_input_values)],
            [TensorSpec("logits", "float32", ["B", p.max_len, cfg.k])], batch), PriorRecomputeGraph(p))
    return specs
