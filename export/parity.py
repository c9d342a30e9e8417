"""Parity of the exported graphs against PyTorch, measured at every export.

- float32 graphs (ONNX Runtime vs PyTorch, the contract's random feeds, batch 1 and 3): max abs <= 1e-4;
- prior: KV-cache step logits = recompute logits = PyTorch logits (both ways) at every position (<= 1e-5);
- mixed fp16 denoiser vs PyTorch float32: error per sigma over [SIGMA_MIN, SIGMA_MAX], reported (bounded
  loosely to catch a broken graph, not to judge precision);
- whole sampler: the one sampling core over the graphs (fp32 and fp16 denoiser) against the same core
  over the torch networks, on the same seeds: final samples and token agreement.

The budget scales with the model: above REDUCED_ABOVE_PARAMS denoiser parameters the whole-sampler check
runs 1 seed for 3 Heun steps and the fp16 check 2 samples at each of 7 sigmas (`budget`); the figures
record the budget used.
"""
from __future__ import annotations

import numpy as np
import torch

from discodiff.errors import UserError
from discodiff.networks import DisCoDiff
from discodiff.runtime.contract import SIGMA_MAX, SIGMA_MIN, null_label
from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.schedule import sigma_steps
from discodiff.sampling import TorchModel

FP32_TOL = 1e-4
KV_TOL = 1e-5
FP16_REL_BOUND = 5e-2        # relative L2 per sigma above this means the fp16 graph is broken
PARITY_SIGMAS = np.geomspace(SIGMA_MIN, SIGMA_MAX, 13)
REDUCED_ABOVE_PARAMS = 20_000_000   # denoiser parameters above which the budget below is cut
FULL_BUDGET = {"sampler_seeds": 4, "sampler_steps": 18, "fp16_sigmas": 13, "fp16_per_sigma": 4}
REDUCED_BUDGET = {"sampler_seeds": 1, "sampler_steps": 3, "fp16_sigmas": 7, "fp16_per_sigma": 2}


class ParityError(UserError):
    pass


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@torch.no_grad()
def torch_denoise(model: DisCoDiff, feeds: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    return model.denoiser(t["x"], t["sigma"], tokens=t.get("tokens"), class_labels=t.get("class_labels")).numpy()


def check_denoiser(model: DisCoDiff, backend, rng: np.random.Generator) -> dict:
    spec, errs = backend.specs["denoiser"], []
    for b in (1, 3):
        feeds = spec.sample_feeds(rng, b, model.cfg.sigma_data)
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
    """Feed the same random sequences to the torch prior (recompute and KV step), the ORT recompute graph
    and the ORT KV-cache step graph; compare the logits at every position."""
    cfg = model.cfg
    seq = np.concatenate([rng.integers(0, null_label(cfg.num_classes) + 1, size=(batch, 1)),
                          rng.integers(0, cfg.k, size=(batch, cfg.m - 1))], axis=1).astype(np.int32)
    ref = model.prior(torch.from_numpy(seq)).numpy()                                   # [B, m, k]
    recompute = backend.run("prior_recompute", {"tokens": seq})["logits"]
    tm = TorchModel(model)
    steps = {"torch": tm.prior_step(batch), "ort": Pipeline.from_backend(backend, tm.meta).model.prior_step(batch)}
    kv = {name: np.stack([step(seq[:, pos], pos) for pos in range(cfg.m)], axis=1) for name, step in steps.items()}
    fig = {"kv_vs_recompute": _maxabs(kv["ort"], recompute), "kv_vs_torch": _maxabs(kv["ort"], ref),
           "recompute_vs_torch": _maxabs(recompute, ref), "torch_kv_vs_torch": _maxabs(kv["torch"], ref),
           "positions": cfg.m, "tol": KV_TOL}
    worst = max(v for k, v in fig.items() if k not in ("positions", "tol"))
    if worst > KV_TOL:
        raise ParityError(f"prior: KV-cache / recompute / PyTorch logits differ by {worst:.2e} (> {KV_TOL:g})")
    return fig


def budget(model: DisCoDiff) -> dict:
    """How much parity checking the model gets: the full budget, or the reduced one for a large denoiser."""
    n = sum(p.numel() for p in model.denoiser.parameters())
    reduced = n > REDUCED_ABOVE_PARAMS
    return {"denoiser_params": n, "reduced": reduced, "reduced_above_params": REDUCED_ABOVE_PARAMS,
            **(REDUCED_BUDGET if reduced else FULL_BUDGET)}


def check_fp16(model: DisCoDiff, backend, rng: np.random.Generator, per_sigma: int = 4,
               sigmas: np.ndarray = PARITY_SIGMAS) -> dict:
    """fp16 graph vs PyTorch float32 at each of `sigmas`, `per_sigma` samples each."""
    spec, rows = backend.specs["denoiser_fp16"], []
    for s in sigmas:
        feeds = spec.sample_feeds(rng, per_sigma, model.cfg.sigma_data, sigmas=np.full(per_sigma, s))
        out, ref = backend.run("denoiser_fp16", feeds)["denoised"], torch_denoise(model, feeds)
        rows.append({"sigma": float(s), "max_abs": _maxabs(out, ref), "rel_l2": _rel_l2(out, ref)})
    worst = max(r["rel_l2"] for r in rows)
    if not np.isfinite(worst) or worst > FP16_REL_BOUND:
        raise ParityError(f"fp16 denoiser: relative error {worst:.2e} against float32 (> {FP16_REL_BOUND:g}); "
                          "the mixed-precision graph is broken (or the model's weights are not finite)")
    return {"per_sigma": rows, "max_rel_l2": worst, "max_abs": max(r["max_abs"] for r in rows)}


def check_sampler(model: DisCoDiff, backend, n: int = 4, steps: int = 18) -> dict:
    """Whole Heun run on seeds 0..n-1: the runtime's Pipeline over the graphs vs over the torch networks
    (the same object discodiff-run calls; the manifest does not exist yet, so the models are given)."""
    tm = TorchModel(model)
    seeds, sigmas = np.arange(n), sigma_steps(steps, tm.meta.sigma_min, tm.meta.sigma_max, tm.meta.rho)
    options = dict(solver="heun", sigmas=sigmas, batch=n, nonfinite="keep")
    ref = Pipeline(tm)(seeds, **options)
    out = {"seeds": n, "solver": "heun", "steps": steps}
    for graph in ("denoiser", "denoiser_fp16"):
        got = Pipeline.from_backend(backend, tm.meta, denoiser=graph)(seeds, **options)
        out[graph] = {"max_abs": _maxabs(got.x, ref.x), "rel_l2": _rel_l2(got.x, ref.x),
                      "token_agreement": float(np.mean(got.tokens == ref.tokens)) if model.cfg.m else 1.0}
    if out["denoiser"]["max_abs"] > FP32_TOL or out["denoiser"]["token_agreement"] < 1.0:
        raise ParityError(f"sampler: ONNX Runtime samples differ from PyTorch by {out['denoiser']['max_abs']:.2e} "
                          f"(token agreement {out['denoiser']['token_agreement']:.2f})")
    return out


def run_all(model: DisCoDiff, backend, seed: int = 0) -> dict:
    rng, b = np.random.default_rng(seed), budget(model)
    sigmas = np.geomspace(SIGMA_MIN, SIGMA_MAX, b["fp16_sigmas"])
    fig = {"denoiser": check_denoiser(model, backend, rng),
           "denoiser_fp16": check_fp16(model, backend, rng, b["fp16_per_sigma"], sigmas)}
    if model.cfg.m:
        fig["encoder"] = check_encoder(model, backend, rng)
        fig["prior"] = check_prior(model, backend, rng)
    fig["sampler"] = check_sampler(model, backend, b["sampler_seeds"], b["sampler_steps"])
    fig["budget"] = b
    return fig
