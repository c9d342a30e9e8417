"""What a request resolves to (runtime.plan): levels, solver and calls from --steps/--nfe/--schedule/
--solver, the bundle's defaults and its fitted schedules; requests it cannot serve get one line."""
from __future__ import annotations

import numpy as np
import pytest

from discodiff.runtime.contract import ModelMeta
from discodiff.runtime.plan import PlanError, plan
from discodiff.runtime.schedule import logsnr_steps, sigma_steps

META = ModelMeta((2,), 1, 8, 0)
FIT8 = [80.0, 20.0, 5.0, 1.2, 0.3, 0.07, 0.02, 0.005, 0.0]
SAMPLING = {"solver": "heun", "steps": 18, "schedule": "edm", "fitted": {"8": {"solver": "dpm2m", "nfe": 8, "sigmas": FIT8}}}


def test_defaults_are_the_bundles():
    p = plan(META, SAMPLING)
    assert (p.solver, p.schedule, p.steps, p.nfe) == ("heun", "edm", 18, 35)
    np.testing.assert_array_equal(p.sigmas, sigma_steps(18))


def test_nfe_takes_the_fitted_schedule_and_its_solver():
    p = plan(META, SAMPLING, nfe=8)
    assert (p.solver, p.schedule, p.nfe) == ("dpm2m", "fitted", 8)
    np.testing.assert_array_equal(p.sigmas, FIT8)
    assert plan(META, SAMPLING, nfe=8, solver="ipndm").solver == "ipndm"     # any combination


def test_nfe_without_a_fit_uses_the_named_schedule():
    p = plan(META, SAMPLING, nfe=6, solver="dpm3m", schedule="logsnr")
    assert (p.steps, p.nfe) == (6, 6)
    np.testing.assert_array_equal(p.sigmas, logsnr_steps(6))
    h = plan(META, SAMPLING, nfe=9)             # heun (the bundle's): 9 calls = 5 levels
    assert (h.solver, h.steps, h.nfe, h.schedule) == ("heun", 5, 9, "edm")
    assert plan(META, SAMPLING, nfe=8, schedule="edm", solver="euler").schedule == "edm"   # a fit exists, edm asked for


@pytest.mark.parametrize("kw, words", [
    (dict(schedule="fitted", nfe=6), "discodiff-fit --bundle B --nfe 6"),
    (dict(schedule="fitted"), "needs nfe"),
    (dict(schedule="fitted", steps=8), "give nfe, not steps"),
    (dict(nfe=8, steps=8), "not both"),
    (dict(nfe=6), "odd"),                        # heun, the default, cannot make 6 calls
    (dict(solver="rk4"), "rk4"),
    (dict(schedule="cosine"), "cosine"),
])
def test_requests_it_cannot_serve(kw, words):
    with pytest.raises(PlanError) as exc:
        plan(META, SAMPLING, bundle="B", **kw)
    assert words in str(exc.value) and "\n" not in str(exc.value)
