"""ODE solvers for the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022).

Pure functions over one narrow contract, `denoise(x, sigma) -> D(x; sigma)` with `sigma` a Python float,
written with arithmetic operators only, so the same code runs on numpy arrays (the runtime) and on torch
tensors (the PyTorch reference sampler, on any device). The schedule is float64 (Python floats); the
state keeps the dtype of x (float32).

Steps: `sigmas` = [t_0, ..., t_{N-1}, 0] from `schedule.sigma_steps(N)`. Function evaluations:
Heun 2N - 1 (the last step to sigma = 0 is an Euler step), Euler N, DPM-Solver++(2M) N, and the
multistep solvers iPNDM, DPM-Solver++(3M) and UniPC N (one call per step, the step to sigma = 0
included). Measured orders on EDM rho = 7 steps (tests/runtime/test_multistep_solvers.py): iPNDM 3.8-3.9,
DPM-Solver++(3M) 3.0-3.1, UniPC-3 4.0.

The multistep solvers use variable-step coefficients: each step integrates, exactly (float64), the
Lagrange interpolant of the last q derivatives (iPNDM, in sigma) or denoised values (DPM-Solver++(3M),
in lambda = -log sigma, against the exponential-integrator kernel) over the actual step, so they keep
their order on non-uniform schedules such as EDM rho = 7. UniPC (B(h) = expm1(h)) solves its small
linear systems for the coefficients, as the paper does.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

SOLVERS = ("heun", "euler", "dpm2m", "ipndm", "dpm3m", "unipc")
DETERMINISTIC = ("dpm2m", "ipndm", "dpm3m", "unipc")   # no churn


def nfe(solver: str, steps: int) -> int:
    """Denoiser calls of `steps` steps (levels - 1) of `solver`: Heun 2 steps - 1, every other solver `steps`."""
    return 2 * steps - 1 if solver == "heun" else steps


def steps_for(solver: str, nfe: int) -> int:
    """Solver steps (levels - 1) that use exactly `nfe` denoiser calls."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if nfe < 1:
        raise ValueError("nfe must be >= 1")
    if solver == "heun":
        if nfe % 2 == 0:
            raise ValueError(f"heun makes 2 steps - 1 denoiser calls, so its nfe must be odd (got {nfe})")
        return (nfe + 1) // 2
    return nfe


def churn_gamma(t: float, steps: int, churn: float, s_min: float = 0.0, s_max: float = math.inf) -> float:
    """EDM Alg. 2: how much noise to add back at level t (0 = deterministic)."""
    return min(churn / steps, math.sqrt(2) - 1) if churn > 0 and s_min <= t <= s_max else 0.0


def heun(denoise: Callable, x, sigmas: np.ndarray, *, churn: float = 0.0, churn_noise: Callable | None = None,
         s_noise: float = 1.0, callback: Callable | None = None):
    """EDM Alg. 2 (Alg. 1 when churn = 0): 2nd-order Heun, Euler on the final step to sigma = 0."""
    return _euler_heun(denoise, x, sigmas, True, churn, churn_noise, s_noise, callback)


def euler(denoise: Callable, x, sigmas: np.ndarray, *, churn: float = 0.0, churn_noise: Callable | None = None,
          s_noise: float = 1.0, callback: Callable | None = None):
    """1st-order Euler; with churn = 0 this is deterministic DDIM (Song et al. 2021) in EDM form."""
    return _euler_heun(denoise, x, sigmas, False, churn, churn_noise, s_noise, callback)


def _euler_heun(denoise, x, sigmas, second_order, churn, churn_noise, s_noise, callback):
    steps = len(sigmas) - 1
    for i in range(steps):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = churn_gamma(t_cur, steps, churn)
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:  # stochastic: raise the noise level from t_cur to t_hat
            x = x + math.sqrt(t_hat**2 - t_cur**2) * s_noise * churn_noise(i)
        d = (x - denoise(x, t_hat)) * (1.0 / t_hat)
        x_next = x + (t_next - t_hat) * d
        if second_order and t_next > 0:
            d_next = (x_next - denoise(x_next, t_next)) * (1.0 / t_next)
            x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
        if callback is not None:
            callback(i, x)
    return x


def dpm2m(denoise: Callable, x, sigmas: np.ndarray, *, callback: Callable | None = None, **_unused):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in sigma form; lambda = -log sigma."""
    old = None
    h_last = 0.0
    steps = len(sigmas) - 1
    for i in range(steps):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        den = denoise(x, t_cur)
        if t_next == 0:
            x = den
        else:
            h = math.log(t_cur) - math.log(t_next)
            if old is None:
                den_d = den
            else:
                r = h_last / h
                den_d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (t_next / t_cur) * x - math.expm1(-h) * den_d
            h_last = h
        old = den
        if callback is not None:
            callback(i, x)
    return x


def _phi(k: int, h: float) -> float:
    """phi_k(-h) = sum_j (-h)^j / (j + k)!, the exponential-integrator weights (h >= 0, float64)."""
    if h < 1.0:  # series: the closed form cancels badly for small h
        return sum((-h) ** j / math.factorial(j + k) for j in range(30))
    p = math.exp(-h)                                # phi_0
    for j in range(k):                              # phi_{j+1}(z) = (phi_j(z) - 1/j!) / z, z = -h
        p = (p - 1.0 / math.factorial(j)) / -h
    return p


def _lagrange_weights(nodes: list[float], moments: list[float]) -> list[float]:
    """w_k = integral of L_k(v) dv against a kernel, given its moments m_j = integral of v^j (j < q).

    nodes: q distinct floats (the past points, scaled by the step); L_k is their Lagrange basis.
    """
    q = len(nodes)
    w = []
    for k in range(q):
        others = [nodes[j] for j in range(q) if j != k]
        coef = np.atleast_1d(np.poly(others)) / math.prod(nodes[k] - o for o in others)  # [q], highest first
        w.append(float(sum(coef[q - 1 - j] * moments[j] for j in range(q))))
    return w


def ipndm(denoise: Callable, x, sigmas: np.ndarray, *, max_order: int = 4, callback: Callable | None = None,
          **_unused):
    """iPNDM (Zhang & Chen 2023): Adams-Bashforth on d = (x - D) / sigma with variable-step coefficients.

    Orders 1, 2, 3, then max_order (<= 4 by default) from the 4th step on; max_order = 1 is Euler.
    """
    if max_order < 1:
        raise ValueError("max_order must be >= 1")
    ds: list = []        # past derivatives, newest first (at most max_order)
    steps = len(sigmas) - 1
    for i in range(steps):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, t_cur)) * (1.0 / t_cur)
        ds = [d] + ds[:max_order - 1]
        h = t_next - t_cur
        # nodes of the past derivatives in units of the step, v = (t - t_cur) / h; moments of [0, 1]
        nodes = [(float(sigmas[i - k]) - t_cur) / h for k in range(len(ds))]
        w = _lagrange_weights(nodes, [1.0 / (j + 1) for j in range(len(ds))])
        inc = (h * w[0]) * ds[0]
        for k in range(1, len(ds)):
            inc = inc + (h * w[k]) * ds[k]
        x = x + inc
        if callback is not None:
            callback(i, x)
    return x


def dpm3m(denoise: Callable, x, sigmas: np.ndarray, *, callback: Callable | None = None, **_unused):
    """DPM-Solver++(3M) (Lu et al. 2022), deterministic, data prediction, lambda = -log sigma.

    x_next = (t_next / t_cur) x + sum_k w_k D_k, w_k = integral over [0, h] of e^(u - h) L_k(u) du with
    L_k the Lagrange basis of the last (1, 2, then 3) lambda points: exact for quadratic D(lambda).
    The final step to sigma = 0 returns the denoised value.
    """
    dens: list = []      # past denoised values, newest first (at most 3)
    lams: list = []      # their lambdas
    steps = len(sigmas) - 1
    for i in range(steps):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        den = denoise(x, t_cur)
        dens, lams = [den] + dens[:2], [-math.log(t_cur)] + lams[:2]
        if t_next == 0:
            x = den
        else:
            h = math.log(t_cur) - math.log(t_next)
            nodes = [(lam - lams[0]) / h for lam in lams]            # v = u / h <= 0
            # moments of v^j against e^(h (v - 1)) h dv on [0, 1]: j! h phi_{j+1}(-h)
            w = _lagrange_weights(nodes, [math.factorial(j) * h * _phi(j + 1, h) for j in range(len(dens))])
            nxt = (t_next / t_cur) * x + w[0] * dens[0]
            for k in range(1, len(dens)):
                nxt = nxt + w[k] * dens[k]
            x = nxt
        if callback is not None:
            callback(i, x)
    return x


def _unipc_weights(lams: list[float], h: float, q: int) -> tuple[list[float], list[float], float]:
    """UniPC-bh2 weights in data prediction for a step of length h in lambda, history lams (newest first).

    Returns (predictor weights on the q past denoised values, corrector weights on them, corrector weight
    on the new denoised value); both steps add them to (t_next / t_cur) x. Schedule maths, float64.
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)                                   # B(h) of the "bh2" variant
    rks = [(lams[k] - lams[0]) / h for k in range(1, q)] + [1.0]
    b, h_phi_k, fact = [], h_phi_1 / hh - 1.0, 1.0
    for j in range(1, q + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R = np.array([[r ** (j - 1) for r in rks] for j in range(1, q + 1)])          # [q, q]
    rho_p = [0.5] if q == 2 else (list(np.linalg.solve(R[:-1, :-1], b[:-1])) if q > 2 else [])
    rho_c = [0.5] if q == 1 else list(np.linalg.solve(R, np.array(b)))

    def combine(rho):   # -h_phi_1 D_0 - B(h) sum_k rho_k (D_k - D_0) / r_k  as weights on D_0..D_{q-1}
        w = [-h_phi_1] + [0.0] * (q - 1)
        for k in range(1, q):
            c = -b_h * float(rho[k - 1]) / rks[k - 1]
            w[k] += c
            w[0] -= c
        return w

    w_c = combine(rho_c)
    w_new = -b_h * float(rho_c[-1])
    w_c[0] -= w_new                                        # ... - B(h) rho_c[-1] (D_new - D_0)
    return combine(rho_p), w_c, w_new


def unipc(denoise: Callable, x, sigmas: np.ndarray, *, order: int = 3, callback: Callable | None = None,
          **_unused):
    """UniPC (Zhao et al. 2023), B(h) = expm1(h), data prediction, lambda = -log sigma: UniP-q predictor and
    UniC corrector (q = 1, 2, then `order`); the corrector uses the denoised value at the predicted next
    state, which the next step reuses (one call per step). The final step to sigma = 0 returns that
    denoised value (as dpm2m does; the official sampler also skips the corrector on its last step).
    callback(i, x) sees the predicted (not yet corrected) state at sigmas[i + 1].
    """
    if order < 1:
        raise ValueError("order must be >= 1")
    dens: list = []      # past denoised values, newest first (at most `order`)
    lams: list = []
    corr = None          # (x at the previous level, its ratio, corrector weights, weight of the new value)
    steps = len(sigmas) - 1
    x_pred = x
    for i in range(steps):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        den = denoise(x_pred, t_cur)
        if corr is not None:                               # UniC: correct the step that led here
            x_prev, ratio, w_c, w_new = corr
            x = ratio * x_prev + w_new * den
            for k, w in enumerate(w_c):
                x = x + w * dens[k]
        dens, lams = [den] + dens[:order - 1], [-math.log(t_cur)] + lams[:order - 1]
        if t_next == 0:
            x_pred = den
        else:
            h = math.log(t_cur) - math.log(t_next)
            w_p, w_c, w_new = _unipc_weights(lams, h, len(dens))
            x_pred = (t_next / t_cur) * x
            for k, w in enumerate(w_p):
                x_pred = x_pred + w * dens[k]
            corr = (x, t_next / t_cur, w_c, w_new)
        if callback is not None:
            callback(i, x_pred)
    return x_pred


def solve(solver: str, denoise: Callable, x, sigmas: np.ndarray, **kwargs):
    """Integrate the probability-flow ODE from x (at sigmas[0]) down the levels `sigmas` (float64, ending
    in 0) with the named solver; `kwargs` are the solver's (churn, churn_noise, callback, ...)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver in DETERMINISTIC and kwargs.get("churn", 0) > 0:
        raise ValueError("churn is defined for the heun and euler solvers only")
    fn = {"heun": heun, "euler": euler, "dpm2m": dpm2m, "ipndm": ipndm, "dpm3m": dpm3m, "unipc": unipc}[solver]
    return fn(denoise, x, sigmas, **kwargs)
