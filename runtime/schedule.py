"""Sampling noise levels, float64: EDM's rho schedule (Eq. 5), uniform in log sigma, and by name.
Torch-free; the PyTorch reference sampler uses it too. Fitted schedules come from `fit.schedule` and
live in a bundle's manifest. The EDM range has its one home in `contract`.
"""
from __future__ import annotations

import numpy as np

from discodiff.runtime.contract import RHO, SIGMA_MAX, SIGMA_MIN


def sigma_steps(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = RHO) -> np.ndarray:
    """t_0 = sigma_max > ... > t_{N-1} = sigma_min, then t_N = 0: float64 [steps + 1]."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    i = np.arange(steps, dtype=np.float64)
    frac = i / max(steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(t, 0.0)


def logsnr_steps(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """`steps` levels uniform in log sigma (= uniform in log-SNR) from sigma_max to sigma_min, then 0:
    float64 [steps + 1]."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    frac = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
    t = np.exp(np.log(sigma_max) + frac * (np.log(sigma_min) - np.log(sigma_max)))
    t[0] = sigma_max                 # exact endpoints (exp(log(.)) may be off by an ulp)
    if steps > 1:
        t[-1] = sigma_min
    return np.append(t, 0.0)


SCHEDULES = ("edm", "logsnr")


def schedule_steps(name: str, steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                   rho: float = RHO) -> np.ndarray:
    """Dispatch by name: "edm" (rho schedule, `sigma_steps`) or "logsnr" (`logsnr_steps`; rho unused)."""
    if name == "edm":
        return sigma_steps(steps, sigma_min, sigma_max, rho)
    if name == "logsnr":
        return logsnr_steps(steps, sigma_min, sigma_max)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
