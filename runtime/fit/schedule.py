"""Fit a solver's noise levels to a model, GITS-style (Chen et al. 2024, "On the Trajectory Regularity of
ODE-based Diffusion Sampling"). Torch-free: pure functions of `denoise(x, t) -> D(x; t)` on numpy float32
arrays x [B, ...] (a calibration batch; the Heun costs call it with a larger batch, see 2.) and a float t.

1. Teacher (`teacher`): Heun (EDM Alg. 1) from x_T = noise * sigma_max ON the candidate grid itself:
   `grid` levels uniform in log sigma from sigma_max to sigma_min, then 0 (default 128: 2 grid - 1 = 255
   calls). Running on the grid records, for free, the state X_i and D(X_i; t_i) at every candidate level,
   with the same relative resolution everywhere (Delta log sigma = 0.083). Its error is small next to what
   we fit: on the mixture test problem (data std 1.03) its RMSE is 4.4e-4 (vs a 2048-step reference; the
   EDM rho = 7 schedule at 128 steps gives 4.1e-4), while the best fitted schedule at nfe <= 10 is 0.013. Memory: the
   trajectory is (grid + 1) x the batch in float32 (e.g. 400 MB for 64 images 3 x 64 x 64).
2. Jump costs: cost(i, j) = RMSE between one solver step from the teacher state at level i to level j
   and the teacher state X_j, times a gain rms(x0) / rms(X_j): the probability-flow ODE contracts the
   state (and errors with it) like sqrt(sigma^2 + sigma_data^2), so an error made at high sigma costs
   less at t = 0. (Measured: the gain lowers the DP-only held-out error of Euler at nfe 5 / 8 from 0.192 /
   0.144 to 0.175 / 0.087, of Heun at nfe 7 from 0.58 to 0.14.) Euler costs need no denoiser call (d_i
   is the teacher's). Heun costs need D at the Euler predictor: one call per target level (batched over
   every start level, batch up to B grid / heun_stride), on every `heun_stride`-th grid level.
3. Dynamic programming: the path sigma_max -> 0 with exactly `steps` jumps minimising the summed cost.
   Multistep solvers (ipndm, dpm2m, dpm3m, unipc) use the Euler costs, as GITS does (their steps depend on
   the history, which the one-step costs do not see).
4. Refinement (`refine` sweeps per move size, default 2; 0 = DP only): start from the best of the DP
   path and the EDM rho = 7 and log-sigma schedules snapped to the grid, then coordinate descent of each
   interior level by 8, 4, 2, 1 grid levels on the actual solver's end RMSE against the teacher x0 on the
   calibration batch (`nfe` calls per trial). It matters, above all for the multistep solvers, whose
   global error the summed one-step costs predict poorly: held-out RMSE, DP only -> refined, at nfe 5 /
   8: euler 0.19 / 0.098 -> 0.117 / 0.075, ipndm 0.23 / 0.079 -> 0.069 / 0.033, dpm3m 0.165 / 0.353 ->
   0.043 / 0.025 (DP only, dpm3m at nfe 8 is 2.8x worse than log-sigma). refine = 1 halves the calls
   (155-730 per fit instead of 300-1400, i.e. 0.6-5.5x the teacher's 255) and is as good except where
   the descent stalls (dpm2m nfe 5: 0.10 instead of 0.049). Calibration (512 samples) and held-out
   (4096) errors agree within ~10%: no overfitting seen.
Held-out ratios to EDM rho = 7 and log-sigma per solver and nfe: tests/runtime/test_fit_schedule.py.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from discodiff.runtime.contract import SIGMA_MAX, SIGMA_MIN
from discodiff.runtime.schedule import logsnr_steps, sigma_steps
from discodiff.runtime.solvers import heun, solve, steps_for

GRID = 128                      # candidate levels (and teacher Heun steps)
MOVES = (8, 4, 2, 1)            # refinement step sizes, in grid levels


def _rms(a) -> np.ndarray:
    """RMS over all axes but the first: [K, ...] -> float64 [K]."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    return np.sqrt(np.mean(a * a, axis=1))


def teacher(denoise: Callable, noise: np.ndarray, *, grid: int = GRID, sigma_min: float = SIGMA_MIN,
            sigma_max: float = SIGMA_MAX) -> dict:
    """Heun on the log-uniform candidate grid from x_T = noise [B, ...] * sigma_max. Returns levels
    float64 [M+1] (M = grid, ending in 0), states float32 [M+1, B, ...] (states[0] = x_T, states[M] = the
    teacher x0), denoised float32 [M, B, ...] (D(states[i]; levels[i])) and calls (2 M - 1)."""
    levels = logsnr_steps(grid, sigma_min, sigma_max)
    x = np.asarray(noise, np.float32) * np.float32(sigma_max)
    states, dens = [x], []

    def D(x, t):
        out = denoise(x, t)
        if len(dens) < len(states):       # the first call at a level is at the teacher state
            dens.append(np.asarray(out, np.float32))
        return out

    heun(D, x, levels, callback=lambda i, x: states.append(np.asarray(x, np.float32)))
    return {"levels": levels, "states": np.stack(states), "denoised": np.stack(dens), "calls": 2 * grid - 1}


def teacher_x0(denoise: Callable, noise: np.ndarray, *, grid: int = GRID, sigma_min: float = SIGMA_MIN,
               sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """The teacher's x0 for (held-out) noise [B, ...], keeping no trajectory (2 grid - 1 calls)."""
    x = np.asarray(noise, np.float32) * np.float32(sigma_max)
    return heun(denoise, x, logsnr_steps(grid, sigma_min, sigma_max))


def evaluate(denoise: Callable, noise: np.ndarray, sigmas, solver: str, teacher_x0: np.ndarray) -> float:
    """RMSE of `solver` on `sigmas` (levels ending in 0) from x_T = noise * sigmas[0] against teacher_x0."""
    sigmas = np.asarray(sigmas, np.float64)
    x = np.asarray(noise, np.float32) * np.float32(sigmas[0])
    y = solve(solver, denoise, x, sigmas)
    return float(_rms((np.asarray(y, np.float64) - teacher_x0)[None])[0])


def _gain(tr: dict) -> np.ndarray:
    """[M+1]: rms(x0) / rms(X_j), how much an error at level j shrinks by t = 0 (see the docstring)."""
    r = np.maximum(_rms(tr["states"]), 1e-30)
    return r[-1] / r


def _euler_costs(tr: dict) -> np.ndarray:
    """cost[i, j] (i < j; inf elsewhere) of an Euler step from the teacher state at level i to level j."""
    t, X, Dn = tr["levels"], tr["states"], tr["denoised"]
    m = len(t) - 1
    cost = np.full((m + 1, m + 1), np.inf)
    chunk = max(1, 2**22 // X[0].size)                       # bounds the [chunk, B, ...] float64 temporaries
    for i in range(m):
        d = (X[i].astype(np.float64) - Dn[i]) / t[i]          # [B, ...]
        for j0 in range(i + 1, m + 1, chunk):
            j1 = min(j0 + chunk, m + 1)
            h = (t[j0:j1] - t[i]).reshape((-1,) + (1,) * d.ndim)
            cost[i, j0:j1] = _rms(X[i] + h * d - X[j0:j1])     # the jump to 0 gives D_i, as the solver does
    return cost * _gain(tr)[None, :]


def _heun_costs(denoise: Callable, tr: dict, stride: int) -> tuple[np.ndarray, int]:
    """Heun-step costs between levels 0, stride, 2 stride, ..., M (inf elsewhere) and the calls used."""
    t, X, Dn = tr["levels"], tr["states"], tr["denoised"]
    m = len(t) - 1
    sub = sorted(set(range(0, m, stride)) | {m})
    cost = np.full((m + 1, m + 1), np.inf)
    cost[sub, m] = _euler_costs(tr)[sub, m]                   # the final step to 0 is Euler, as in heun()
    for j in sub[1:-1]:
        starts = [i for i in sub if i < j]
        x_i = X[starts]                                                               # [S, B, ...]
        d_i = np.stack([(X[i] - Dn[i]) * np.float32(1.0 / t[i]) for i in starts])
        h = np.array([t[j] - t[i] for i in starts], np.float32).reshape((-1,) + (1,) * (x_i.ndim - 1))
        pred = (x_i + h * d_i).reshape((-1,) + x_i.shape[2:])                         # [S B, ...]
        d_j = ((pred - denoise(pred, float(t[j]))) * np.float32(1.0 / t[j])).reshape(x_i.shape)
        cost[starts, j] = _rms(x_i + h * (0.5 * d_i + 0.5 * d_j) - X[j]) * _gain(tr)[j]
    return cost, len(sub) - 2


def _dp(cost: np.ndarray, jumps: int) -> list[int]:
    """Grid indices 0 = i_0 < ... < i_jumps = M minimising sum_k cost[i_k, i_k+1]; O(jumps M^2)."""
    m = cost.shape[0] - 1
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    back = np.zeros((jumps + 1, m + 1), np.int64)
    for k in range(1, jumps + 1):
        tot = best[:, None] + cost                            # [from, to]
        back[k] = np.argmin(tot, axis=0)
        best = tot[back[k], np.arange(m + 1)]
    if not np.isfinite(best[m]):
        raise ValueError(f"no path with {jumps} steps on this grid; use a finer grid")
    path = [m]
    for k in range(jumps, 0, -1):
        path.append(int(back[k][path[-1]]))
    return path[::-1]


def _snap(levels: np.ndarray, sigmas: np.ndarray) -> list[int]:
    """Grid indices nearest (in log sigma) to a schedule's positive levels, strictly increasing, then M."""
    m = len(levels) - 1
    logs = np.log(levels[:m])
    idx: list[int] = []
    for s in sigmas[:-1]:
        i = int(np.argmin(np.abs(logs - np.log(s))))
        idx.append(max(i, idx[-1] + 1) if idx else 0)
    if idx[-1] >= m:
        raise ValueError("grid too coarse for this many steps")
    return idx + [m]


def fit(denoise: Callable, noise_cal: np.ndarray, *, nfe: int, solver: str, sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX, grid: int = GRID, refine: int = 2, heun_stride: int = 4,
        teacher_traj: dict | None = None) -> dict:
    """Fit the levels of `solver` for exactly `nfe` denoiser calls on calibration noise [B, ...] (standard
    normal). Pass `teacher_traj` (from `teacher(...)` on the same noise, grid and sigma range) to reuse it.

    Returns dict(sigmas=[sigma_max, ..., 0.0] (steps_for(solver, nfe) + 1 floats, strictly decreasing),
    solver, nfe, calib_rmse (against the teacher x0), calls (denoiser calls made, teacher included if
    this call computed it)).
    """
    steps = steps_for(solver, nfe)
    calls = 0
    if teacher_traj is None:
        teacher_traj = teacher(denoise, noise_cal, grid=grid, sigma_min=sigma_min, sigma_max=sigma_max)
        calls += teacher_traj["calls"]
    t, x0 = teacher_traj["levels"], teacher_traj["states"][-1]
    if solver == "heun":
        cost, c = _heun_costs(denoise, teacher_traj, heun_stride)
        calls += c
    else:
        cost = _euler_costs(teacher_traj)
    idx = _dp(cost, steps)

    def err(ix):
        nonlocal calls
        calls += nfe
        return evaluate(denoise, noise_cal, t[ix], solver, x0)

    best = err(idx)
    if refine > 0:                                # multi-start: the hand-made schedules, snapped to the grid
        for start in (_snap(t, sigma_steps(steps, sigma_min, sigma_max)),
                      _snap(t, logsnr_steps(steps, sigma_min, sigma_max))):
            if start != idx and (e := err(start)) < best:
                idx, best = start, e
    for move in MOVES:                            # coordinate descent of the interior levels
        for _ in range(refine):
            improved = False
            for k in range(1, steps):             # idx[0] (sigma_max) and idx[steps] (0) stay
                for j in (idx[k] - move, idx[k] + move):
                    if idx[k - 1] < j < idx[k + 1]:
                        trial = idx[:k] + [j] + idx[k + 1:]
                        if (e := err(trial)) < best:
                            idx, best, improved = trial, e, True
            if not improved:
                break
    return {"sigmas": [float(s) for s in t[idx]], "solver": solver, "nfe": nfe, "calib_rmse": best,
            "calls": calls}


def fit_many(denoise: Callable, noise_cal: np.ndarray, *, nfes, solver: str, sigma_min: float = SIGMA_MIN,
             sigma_max: float = SIGMA_MAX, grid: int = GRID, **kw) -> tuple[list[dict], int]:
    """`fit` for several nfe values on one teacher trajectory: (results, total denoiser calls)."""
    tr = teacher(denoise, noise_cal, grid=grid, sigma_min=sigma_min, sigma_max=sigma_max)
    out = [fit(denoise, noise_cal, nfe=n, solver=solver, sigma_min=sigma_min, sigma_max=sigma_max, grid=grid,
               teacher_traj=tr, **kw) for n in nfes]
    return out, tr["calls"] + sum(r["calls"] for r in out)
