"""ODE solvers for the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022).

Pure functions over one narrow contract, `denoise(x, sigma) -> D(x; sigma)` with `sigma` a Python float,
written with arithmetic operators only, so the same code runs on numpy arrays (the runtime) and on torch
tensors (the PyTorch reference sampler, on any device). The schedule is float64 (Python floats); the
state keeps the dtype of x (float32).

Steps: `sigmas` = [t_0, ..., t_{N-1}, 0] from `schedule.sigma_steps(N)`. Function evaluations:
Heun 2N - 1 (the last step to sigma = 0 is an Euler step), Euler N, DPM-Solver++(2M) N.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

SOLVERS = ("heun", "euler", "dpm2m")


def nfe(solver: str, steps: int) -> int:
    return 2 * steps - 1 if solver == "heun" else steps


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


def solve(solver: str, denoise: Callable, x, sigmas: np.ndarray, **kwargs):
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "dpm2m" and kwargs.get("churn", 0) > 0:
        raise ValueError("churn is defined for the heun and euler solvers only")
    return {"heun": heun, "euler": euler, "dpm2m": dpm2m}[solver](denoise, x, sigmas, **kwargs)
