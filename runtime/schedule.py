"""Sampling noise levels (EDM Eq. 5), float64. Torch-free; the PyTorch reference sampler uses it too."""
from __future__ import annotations

import numpy as np

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


def sigma_steps(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = RHO) -> np.ndarray:
    """t_0 = sigma_max > ... > t_{N-1} = sigma_min, then t_N = 0: float64 [steps + 1]."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    i = np.arange(steps, dtype=np.float64)
    frac = i / max(steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(t, 0.0)
