"""Parity of the exported graphs against PyTorch, measured at every export.

- float32 graphs (ONNX Runtime vs PyTorch, random inputs, batch 1 and 3): max abs error <= 1e-4;
- prior: KV-cache step logits = recompute logits = PyTorch logits at every position (<= 1e-5);
- mixed fp16 denoiser vs PyTorch float32: error per sigma over [0.002, 80], reported (bounded loosely
  to catch a broken graph, not to judge precision);
- whole sampler: the runtime pipeline over ONNX Runtime (fp32 and fp16 denoiser) vs the PyTorch
  reference sampler on the same seeds: final samples and token agreement.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..networks import DisCoDiff
from ..runtime.draws import draw
from ..runtime.pipeline import ModelMeta, Pipeline
from ..sampling import sample as reference_sample

FP32_TOL = 1e-4
KV_TOL = 1e-5
FP16_REL_BOUND = 5e-2        # relative L2 per sigma above this means the fp16 graph is broken
PARITY_SIGMAS = np.geomspace(0.002, 80.0, 13)


class ParityError(UserError):
    pass


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def denoiser_inputs(model: DisCoDiff, sigmas: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Realistic denoiser inputs: x with the scale of noisy data at each sigma, random tokens
    (including the null code k) and labels."""
    cfg = model.cfg
    b = len(sigmas)
    scale = np.sqrt(sigmas**2 + cfg.sigma_data**2).reshape((-1,) + (1,) * len(cfg.data_shape))
    feeds = {"x": (rng.standard_normal((b, *cfg.data_shape)) * scale).astype(np.float32),
             "sigma": sigmas.astype(np.float32)}
    if cfg.m:
        feeds["tokens"] = rng.integers(0, cfg.k + 1, size=(b, cfg.m)).astype(np.int32)
    if cfg.num_classes:
        feeds["class_labels"] = rng.integers(0, cfg.num_classes, size=b).astype(np.int32)
    return feeds


@torch.no_grad()
def torch_denoise(model: DisCoDiff, feeds: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    return model.denoiser(t["x"], t["sigma"], tokens=t.get("tokens"), class_labels=t.get("class_labels")).numpy()


def check_denoiser(model: DisCoDiff, backend, rng: np.random.Generator) -> dict:
    errs = []
    for b in (1, 3):
        sig = np.exp(rng.uniform(np.log(0.002), np.log(80.0), size=b))
        feeds = denoiser_inputs(model, sig, rng)
        errs.append(_maxabs(backend.run("denoiser", feeds)["denoised"], torch_denoise(model, feeds)))
    fig = {"max_abs": max(errs), "tol": FP32_TOL}
    if fig["max_abs"] > FP32_TOL:
        raise ParityError(f"denoiser: ONNX Runtime differs from PyTorch by {fig['max_abs']:.2e} (> {FP32_TOL:g})")
    return fig


@torch.no_grad()
def check_encoder(model: DisCoDiff, backend, rng: np.random.Generator) -> dict:
    errs, agree = [], []
    for b in (1, 3):
        x = (rng.standard_normal((b, *model.cfg.data_shape)) * model.cfg.sigma_data).astype(np.float32)
        out = backend.run("encoder", {"x": x})
        ref = model.encoder(torch.from_numpy(x)).numpy()
        errs.append(_maxabs(out["logits"], ref))
        agree.append(float(np.mean(out["tokens"] == ref.argmax(-1))))
    fig = {"max_abs": max(errs), "token_agreement": min(agree), "tol": FP32_TOL}
    if fig["max_abs"] > FP32_TOL:
        raise ParityError(f"encoder: ONNX Runtime logits differ from PyTorch by {fig['max_abs']:.2e} (> {FP32_TOL:g})")
    return fig


@torch.no_grad()
def check_prior(model: DisCoDiff, backend, rng: np.random.Generator, batch: int = 3) -> dict:
    """Feed the same random sequences to the torch prior, the ORT recompute graph and the ORT KV-cache
    step graph; compare the logits at every position."""
    cfg, prior = model.cfg, model.prior
    seq = np.concatenate([rng.integers(0, cfg.num_classes + 1, size=(batch, 1)),
                          rng.integers(0, cfg.k, size=(batch, cfg.m - 1))], axis=1).astype(np.int32)
    ref = prior(torch.from_numpy(seq)).numpy()                                        # [B, m, k]
    recompute = backend.run("prior_recompute", {"tokens": seq})["logits"]
    step = Pipeline(backend, ModelMeta(cfg.data_shape, cfg.m, cfg.k, cfg.num_classes)).prior_step_fn(batch)
    cached = np.stack([step(seq[:, pos], pos) for pos in range(cfg.m)], axis=1)
    fig = {"kv_vs_recompute": _maxabs(cached, recompute), "kv_vs_torch": _maxabs(cached, ref),
           "recompute_vs_torch": _maxabs(recompute, ref), "positions": cfg.m, "tol": KV_TOL}
    worst = max(fig["kv_vs_recompute"], fig["kv_vs_torch"], fig["recompute_vs_torch"])
    if worst > KV_TOL:
        raise ParityError(f"prior: KV-cache / recompute / PyTorch logits differ by {worst:.2e} (> {KV_TOL:g})")
    return fig


def check_fp16(model: DisCoDiff, backend, rng: np.random.Generator, per_sigma: int = 4) -> dict:
    """fp16 graph vs PyTorch float32 at each sigma of PARITY_SIGMAS."""
    rows = []
    for s in PARITY_SIGMAS:
        feeds = denoiser_inputs(model, np.full(per_sigma, s), rng)
        out, ref = backend.run("denoiser_fp16", feeds)["denoised"], torch_denoise(model, feeds)
        rows.append({"sigma": float(s), "max_abs": _maxabs(out, ref), "rel_l2": _rel_l2(out, ref)})
    worst = max(r["rel_l2"] for r in rows)
    if not np.isfinite(worst) or worst > FP16_REL_BOUND:
        raise ParityError(f"fp16 denoiser: relative error {worst:.2e} against float32 (> {FP16_REL_BOUND:g}); "
                          "the mixed-precision graph is broken")
    return {"per_sigma": rows, "max_rel_l2": worst, "max_abs": max(r["max_abs"] for r in rows)}


def check_sampler(model: DisCoDiff, backend, n: int = 4, steps: int = 18) -> dict:
    """Whole Heun run on seeds 0..n-1: runtime pipeline (ORT) vs the PyTorch reference sampler."""
    cfg = model.cfg
    draws = draw(np.arange(n), cfg.data_shape, cfg.m, cfg.num_classes)
    ref = reference_sample(model, draws=draws, steps=steps)
    meta = ModelMeta(cfg.data_shape, cfg.m, cfg.k, cfg.num_classes)
    out = {"seeds": n, "solver": "heun", "steps": steps}
    for graph in ("denoiser", "denoiser_fp16"):
        x, tok = Pipeline(backend, meta, denoiser=graph).sample(draws, steps=steps)
        out[graph] = {"max_abs": _maxabs(x, ref.x), "rel_l2": _rel_l2(x, ref.x),
                      "token_agreement": float(np.mean(tok == ref.tokens)) if cfg.m else 1.0}
    if out["denoiser"]["max_abs"] > FP32_TOL or out["denoiser"]["token_agreement"] < 1.0:
        raise ParityError(f"sampler: ONNX Runtime samples differ from PyTorch by {out['denoiser']['max_abs']:.2e} "
                          f"(token agreement {out['denoiser']['token_agreement']:.2f})")
    return out


def run_all(model: DisCoDiff, backend, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    fig = {"denoiser": check_denoiser(model, backend, rng), "denoiser_fp16": check_fp16(model, backend, rng)}
    if model.cfg.m:
        fig["encoder"] = check_encoder(model, backend, rng)
        fig["prior"] = check_prior(model, backend, rng)
    fig["sampler"] = check_sampler(model, backend)
    return fig
