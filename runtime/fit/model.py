"""Fitting the sampling schedule of a model (any adapter of the model protocol; usually a bundle's graphs
on ONNX Runtime, so what is fitted is what serves): the schedule-level maths is `fit.schedule`'s.

Calibration and held-out samples are drawn as every sample is (`draws`, per seed: class, prior uniforms,
noise), their tokens come from the model's prior, and each is solved with its own conditioning; the
teacher is Heun on a fine log-sigma grid (2 x 128 - 1 = 255 calls). Fits are unguided (guidance 1).
Each fit records its held-out error and, for comparison, that of the EDM rho = 7 schedule with the
same solver and number of calls.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np

from discodiff.runtime.draws import draw
from discodiff.runtime.fit.schedule import GRID, evaluate, fit, teacher, teacher_x0
from discodiff.runtime.manifest import Fit, Manifest
from discodiff.runtime.sampling import prior_tokens
from discodiff.runtime.schedule import sigma_steps
from discodiff.runtime.solvers import steps_for

CALIBRATION_SEED = 1_000_000_000     # far from the seeds users sample (0, 1, 2, ...)
HELDOUT_SEED = 2_000_000_000


def conditioned_denoiser(model, draws, tokens: np.ndarray, max_batch: int) -> Callable:
    """`D(x, t)` for x float32 [k x B, ...] (k copies of the B samples, as the fitter's batched costs
    ask), each row with its sample's tokens (int32 [B, m]) and label, in calls of at most `max_batch` rows."""
    labels = draws.labels

    def D(x: np.ndarray, t: float) -> np.ndarray:
        rows = len(x)
        tok, lab = np.resize(tokens, (rows, tokens.shape[1])), np.resize(labels, rows)   # cyclic tiling
        outs = [model.denoise(x[i:i + max_batch], np.full(len(x[i:i + max_batch]), t, np.float32),
                              tok[i:i + max_batch], lab[i:i + max_batch]) for i in range(0, rows, max_batch)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    return D


def _samples(model, first_seed: int, n: int, max_batch: int, prior_batch: int):
    """The draws of seeds first_seed.. first_seed + n - 1 and `D(x, t)` conditioned on their prior tokens."""
    d = draw(np.arange(first_seed, first_seed + n), model.meta)
    tok = np.concatenate([prior_tokens(model, d.take(slice(i, i + prior_batch))) for i in range(0, n, prior_batch)])
    return d, conditioned_denoiser(model, d, tok, max_batch)


def fit_schedules(model, nfes, solver: str, *, max_batch: int, prior_batch: int, calibration: int = 64,
                  heldout: int = 64, refine: int = 2, log: Callable[[str], None] = lambda m: None) -> dict[str, Fit]:
    """Fit `solver`'s levels for each call count in `nfes` on `model` (any adapter of the model protocol).

    Args:
        max_batch, prior_batch: the most rows one denoiser / prior call may take.
        calibration, heldout: samples fitted on / measured on (seeds CALIBRATION_SEED.., HELDOUT_SEED..).
        refine: coordinate-descent sweeps per move size after the dynamic programme (0: none).
    Returns:
        {str(nfe): Fit} for the manifest's sampling.fitted; each fit's `info` holds its held-out RMSE to
        the teacher, that of EDM rho = 7 with the same solver and calls, and how it was made.
    """
    meta = model.meta
    for n in nfes:
        steps_for(solver, n)          # refuses e.g. an even call count for Heun, before any work
    t0 = time.perf_counter()
    rng = dict(sigma_min=meta.sigma_min, sigma_max=meta.sigma_max)
    cal_draws, d_cal = _samples(model, CALIBRATION_SEED, calibration, max_batch, prior_batch)
    held_draws, d_held = _samples(model, HELDOUT_SEED, heldout, max_batch, prior_batch)
    log(f"fitting {solver} for {', '.join(map(str, nfes))} calls: teacher (Heun, {2 * GRID - 1} calls) on "
        f"{calibration} calibration and {heldout} held-out samples ...")
    traj = teacher(d_cal, cal_draws.noise, grid=GRID, **rng)
    x0_held = teacher_x0(d_held, held_draws.noise, grid=GRID, **rng)
    out = {}
    for n in nfes:
        t1 = time.perf_counter()
        res = fit(d_cal, cal_draws.noise, nfe=n, solver=solver, grid=GRID, refine=refine, teacher_traj=traj, **rng)
        held = evaluate(d_held, held_draws.noise, res["sigmas"], solver, x0_held)
        edm = evaluate(d_held, held_draws.noise, sigma_steps(steps_for(solver, n), meta.sigma_min, meta.sigma_max,
                                                              meta.rho), solver, x0_held)
        out[str(n)] = Fit(solver, n, res["sigmas"], {
            "heldout_rmse": held, "heldout_rmse_edm": edm, "calib_rmse": res["calib_rmse"],
            "calibration": {"n": calibration, "first_seed": CALIBRATION_SEED},
            "heldout": {"n": heldout, "first_seed": HELDOUT_SEED},
            "teacher": {"solver": "heun", "grid": GRID, "calls": 2 * GRID - 1}, "refine": refine,
            "guidance": 1.0, "denoiser_calls": res["calls"], "seconds": time.perf_counter() - t1})
        log(f"  {n} calls: held-out RMSE to the teacher {held:.4f} (EDM rho=7 with {solver}: {edm:.4f}, "
            f"{edm / max(held, 1e-12):.1f}x), {res['calls']} calls, {time.perf_counter() - t1:.0f} s")
    log(f"fitted in {time.perf_counter() - t0:.0f} s")
    return out


DEFAULT_FIT_SOLVER = "dpm2m"


def fit_bundle(man: Manifest, nfes, solver: str = DEFAULT_FIT_SOLVER, *, threads: int | None = None,
               **kw) -> dict[str, Fit]:
    """Fit on the bundle `man` describes (its float32 graphs on ONNX Runtime): {str(nfe): Fit}
    (`fit_schedules`; `kw` go to it)."""
    from discodiff.runtime.pipeline import Pipeline

    with Pipeline.open(man.bundle, backend="ort", precision="fp32", threads=threads, spin="on", manifest=man) as pipe:
        return fit_schedules(pipe.model, nfes, solver, max_batch=man.graph("denoiser").batch.max,
                             prior_batch=man.sampling_batch_max, **kw)


def with_fits(man: Manifest, fitted: dict[str, Fit]) -> Manifest:
    """The manifest `man` with `fitted` added to (or replacing the same call counts in) sampling.fitted."""
    return replace(man, sampling=replace(man.sampling, fitted={**man.sampling.fitted, **fitted}))
