"""ODE solvers against the closed-form Gaussian case.

Data ~ N(0, s^2 I): the ideal denoiser is D(x; sigma) = s^2 / (sigma^2 + s^2) x and the probability-flow
ODE dx/dsigma = (x - D)/sigma = sigma x / (sigma^2 + s^2) has x(sigma) proportional to sqrt(sigma^2 + s^2),
so x(0) = x_T s / sqrt(sigma_max^2 + s^2).

For the convergence order we compare against the exact solution down to sigma_min followed by the
solvers' own final step sigma_min -> 0 (x -> D(x; sigma_min), exact for all three solvers' last step):
that step has a fixed O(sigma_min^2 / s^2) error that would otherwise put a floor under the error.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from discodiff.runtime import solvers
from discodiff.runtime.contract import SIGMA_MAX, SIGMA_MIN
from discodiff.runtime.schedule import sigma_steps


def gaussian_denoiser(s: float):
    def D(x, sigma: float):
        return (s * s / (sigma * sigma + s * s)) * x
    return D


def x_exact(x_t, s):
    return x_t * s / math.sqrt(SIGMA_MAX**2 + s**2)


def x_reference(x_t, s):
    """Exact ODE to sigma_min, then the final step to 0 (x -> D(x; sigma_min))."""
    at_min = x_t * math.sqrt((SIGMA_MIN**2 + s**2) / (SIGMA_MAX**2 + s**2))
    return at_min * s * s / (SIGMA_MIN**2 + s**2)


X_T = np.linspace(-1.0, 1.0, 7) * SIGMA_MAX   # float64


def rel_err(solver, n, s):
    y = solvers.solve(solver, gaussian_denoiser(s), X_T.copy(), sigma_steps(n))
    ref = x_reference(X_T, s)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("s", [0.5, 2.0])
@pytest.mark.parametrize("solver,tol", [("heun", 1e-3), ("dpm2m", 1e-3), ("euler", 2e-2)])
def test_solvers_converge_to_closed_form(solver, tol, s):
    y = solvers.solve(solver, gaussian_denoiser(s), X_T.copy(), sigma_steps(256))
    exact = x_exact(X_T, s)
    assert np.abs(y - exact).max() / np.abs(exact).max() < tol


def _slope(solver, ns, s):
    errs = [rel_err(solver, n, s) for n in ns]
    return np.polyfit(np.log(ns), np.log(errs), 1)[0], errs


# Measured on this problem (s = 0.5 and 2): Heun's error ratio per doubling of N is 2^2.45, 2^2.2,
# 2^2.1, 2^2.05 from N = 8 on; Euler's 2^0.95..2^1.0 from N = 16; DPM-Solver++(2M) 2^2.2..2^2.05
# from N = 32 (it is non-monotone below). The windows below sit in the asymptotic regime.
@pytest.mark.parametrize("s", [0.5, 2.0])
@pytest.mark.parametrize("solver,ns,lo,hi", [
    ("heun", [32, 64, 128], -2.4, -1.8),
    ("dpm2m", [64, 128, 256], -2.4, -1.8),
    ("euler", [32, 64, 128], -1.2, -0.85),
])
def test_convergence_order(solver, ns, lo, hi, s):
    slope, errs = _slope(solver, ns, s)
    assert lo <= slope <= hi, (slope, errs)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    for n in (32, 64, 128):
        assert rel_err("heun", n, 1.0) < 0.25 * rel_err("euler", n, 1.0)


@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_same_result_on_torch_and_numpy(solver):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 3)) * SIGMA_MAX).astype(np.float32)
    D = gaussian_denoiser(0.5)
    a = solvers.solve(solver, D, x.copy(), sigma_steps(64))
    b = solvers.solve(solver, D, torch.from_numpy(x.copy()), sigma_steps(64))
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
    np.testing.assert_allclose(b.numpy(), a, rtol=0, atol=1e-5)
    # and both are close to the closed form (64 steps: Euler's error is ~4%, the others' < 1%)
    exact = x_exact(x.astype(np.float64), 0.5)
    assert np.abs(a - exact).max() / np.abs(exact).max() < 0.06


@pytest.mark.parametrize("solver", solvers.SOLVERS)
@pytest.mark.parametrize("n", [1, 2, 5, 18])
def test_nfe_counts_denoiser_calls(solver, n):
    calls = []

    def D(x, sigma):
        calls.append(sigma)
        assert isinstance(sigma, float)
        return 0.5 * x

    solvers.solve(solver, D, np.ones(3), sigma_steps(n))
    assert len(calls) == solvers.nfe(solver, n)
    assert solvers.nfe(solver, n) == (2 * n - 1 if solver == "heun" else n)
    assert 0.0 not in calls  # the denoiser is never asked for sigma = 0


def test_callback_sees_every_step():
    seen = []
    solvers.heun(gaussian_denoiser(1.0), np.ones(2), sigma_steps(6), callback=lambda i, x: seen.append(i))
    assert seen == list(range(6))


def test_churn_draws_noise_once_per_step_and_only_when_asked():
    n = 8
    asked = []

    def noise(i):
        asked.append(i)
        return np.zeros(3)

    solvers.heun(gaussian_denoiser(1.0), np.ones(3), sigma_steps(n), churn=0.0, churn_noise=noise)
    assert asked == []
    solvers.heun(gaussian_denoiser(1.0), np.ones(3), sigma_steps(n), churn=4.0, churn_noise=noise)
    assert asked == list(range(n))
    assert solvers.churn_gamma(1.0, 10, 5.0) == pytest.approx(math.sqrt(2) - 1)  # capped
    assert solvers.churn_gamma(1.0, 10, 2.0) == pytest.approx(0.2)
    assert solvers.churn_gamma(1.0, 10, 0.0) == 0.0
    assert solvers.churn_gamma(1.0, 10, 2.0, s_min=2.0) == 0.0


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_churn_changes_the_result(solver):
    D = gaussian_denoiser(1.0)
    x = np.linspace(-1, 1, 5) * SIGMA_MAX
    rng = np.random.default_rng(0)
    a = solvers.solve(solver, D, x.copy(), sigma_steps(8))
    b = solvers.solve(solver, D, x.copy(), sigma_steps(8), churn=10.0, churn_noise=lambda i: rng.standard_normal(5))
    assert np.abs(a - b).max() > 1e-3


def test_stochastic_heun_keeps_the_marginal_variance():
    """EDM Alg. 2 with churn samples N(0, s^2) too (measured: std 1.0008 at N=256, 100k samples)."""
    s, n = 1.0, 100_000
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n) * SIGMA_MAX
    y = solvers.heun(gaussian_denoiser(s), x, sigma_steps(256), churn=20.0,
                     churn_noise=lambda i: rng.standard_normal(n))
    assert y.std() == pytest.approx(s, rel=0.01)
    assert abs(y.mean()) < 0.02


def test_dpm2m_refuses_churn_and_unknown_solver_is_refused():
    with pytest.raises(ValueError):
        solvers.solve("dpm2m", gaussian_denoiser(1.0), np.ones(2), sigma_steps(4), churn=1.0,
                      churn_noise=lambda i: np.zeros(2))
    with pytest.raises(ValueError):
        solvers.solve("rk4", gaussian_denoiser(1.0), np.ones(2), sigma_steps(4))
