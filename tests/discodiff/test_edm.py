"""EDM formulas (Karras et al. 2022, Table 1 / Eq. 5 / Eq. 8) and the sampling schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from discodiff import edm, losses
from discodiff.config import DenoiserConfig, ModelConfig
from discodiff.networks import Denoiser
from discodiff.runtime.schedule import sigma_steps

SIGMAS64 = torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 2.0, 7.5, 30.0, 80.0], dtype=torch.float64)


@pytest.mark.parametrize("sd", [0.5, 1.0, 2.0])
def test_precond_matches_table_1(sd):
    c_skip, c_out, c_in, c_noise = edm.precond_coefficients(SIGMAS64, sd)
    for i, s in enumerate(SIGMAS64.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-12)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-12)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-12, abs=1e-15)


def test_precond_at_sigma_equal_sigma_data():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm.precond_coefficients(torch.tensor([sd], dtype=torch.float64), sd)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(sd / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (sd * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4)


@pytest.mark.parametrize("sd", [0.5, 2.0])
def test_precond_identities(sd):
    # Derived by hand from Table 1, with S = sigma^2 + sd^2:
    #   c_skip*sd^2 + c_out^2 = sd^4/S + sigma^2 sd^2/S = sd^2
    #   c_in^2 * S = 1                                  (unit-variance network input)
    #   ((1-c_skip)^2 sd^2 + c_skip^2 sigma^2) / c_out^2 = 1   (unit-variance training target of F)
    #   c_out = sigma * sd * c_in, c_skip = sd^2 * c_in^2
    s = SIGMAS64
    c_skip, c_out, c_in, _ = edm.precond_coefficients(s, sd)
    torch.testing.assert_close(c_skip * sd**2 + c_out**2, torch.full_like(s, sd**2), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_skip + (c_out / sd) ** 2, torch.ones_like(s), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_in**2 * (s**2 + sd**2), torch.ones_like(s), rtol=1e-12, atol=0)
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * s**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(s), rtol=1e-10, atol=0)
    torch.testing.assert_close(c_out, s * sd * c_in, rtol=1e-12, atol=0)
    torch.testing.assert_close(c_skip, sd**2 * c_in**2, rtol=1e-12, atol=0)


def test_precond_limits_and_float32():
    c_skip, c_out, _, _ = edm.precond_coefficients(torch.tensor([1e-6, 1e6]), 0.5)
    assert c_skip.dtype == torch.float32
    assert c_skip[0].item() == pytest.approx(1.0, abs=1e-6) and c_out[0].item() == pytest.approx(0.0, abs=1e-5)
    assert c_skip[1].item() == pytest.approx(0.0, abs=1e-6) and c_out[1].item() == pytest.approx(0.5, rel=1e-5)
    f32 = edm.precond_coefficients(SIGMAS64.float(), 2.0)
    f64 = edm.precond_coefficients(SIGMAS64, 2.0)
    for a, b in zip(f32, f64):
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sd", [0.5, 2.0])
def test_loss_weight_is_one_over_c_out_squared(sd):
    _, c_out, _, _ = edm.precond_coefficients(SIGMAS64, sd)
    torch.testing.assert_close(losses.loss_weight(SIGMAS64, sd), 1 / c_out**2, rtol=1e-12, atol=0)


def test_sample_sigma_is_log_normal_and_seeded():
    g = torch.Generator().manual_seed(0)
    s = losses.sample_sigma(200_000, -1.2, 1.2, g)
    assert s.shape == (200_000,) and (s > 0).all()
    ln = s.log()
    assert ln.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert ln.std().item() == pytest.approx(1.2, abs=0.01)
    a = losses.sample_sigma(5, 0.0, 1.0, torch.Generator().manual_seed(3))
    b = losses.sample_sigma(5, 0.0, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_fresh_denoiser_is_c_skip_times_x_and_has_unit_expected_loss():
    """F_theta starts at zero (zero-initialised output layers), so D = c_skip * x; for data with std
    sigma_data the lambda-weighted loss of that D has expectation exactly 1 at every sigma:
    lambda * ((1 - c_skip)^2 sd^2 + c_skip^2 sigma^2) = lambda * c_out^2 = 1."""
    sd = 2.0
    cfg = ModelConfig(data_shape=(16,), m=0, sigma_data=sd,
                      denoiser=DenoiserConfig(backbone="mlp", width=16, depth=1, emb_dim=8))
    torch.manual_seed(0)
    den = Denoiser(cfg).eval()
    g = torch.Generator().manual_seed(1)
    n = 4096
    for s in [0.01, 0.3, 2.0, 20.0]:
        sigma = torch.full((n,), s)
        x = torch.randn(n, 16, generator=g) * 3
        with torch.no_grad():
            D = den(x, sigma)
        c_skip = sd**2 / (s**2 + sd**2)
        torch.testing.assert_close(D, c_skip * x, rtol=1e-5, atol=1e-6)
        y = torch.randn(n, 16, generator=g) * sd
        noise = torch.randn(n, 16, generator=g)
        with torch.no_grad():
            loss = losses.edm_loss(den, y, sigma, noise, sd)
        assert loss.shape == (n,)
        assert loss.mean().item() == pytest.approx(1.0, abs=0.03), s


# ---------------------------------------------------------------------------------------------
# Schedule (EDM Eq. 5)


@pytest.mark.parametrize("n", [2, 5, 18, 64])
def test_sigma_steps_endpoints_and_order(n):
    t = sigma_steps(n)
    assert t.dtype == np.float64
    assert t.shape == (n + 1,)
    assert t[0] == pytest.approx(80.0, rel=1e-14)
    assert t[n - 1] == pytest.approx(0.002, rel=1e-12)
    assert t[n] == 0.0
    assert (np.diff(t) < 0).all()


def test_sigma_steps_matches_eq_5():
    n, rho, smin, smax = 18, 7.0, 0.002, 80.0
    t = sigma_steps(n)
    for i in range(n):
        expect = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        assert t[i] == pytest.approx(expect, rel=1e-13)
    # rho = 1 is linear spacing
    np.testing.assert_allclose(sigma_steps(5, 1.0, 9.0, rho=1.0)[:-1], [9.0, 7.0, 5.0, 3.0, 1.0], rtol=1e-13)


def test_sigma_steps_refuses_zero_steps():
    with pytest.raises(ValueError):
        sigma_steps(0)
