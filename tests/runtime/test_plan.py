"""What a request resolves to (runtime.plan): levels, solver and calls from --steps/--nfe/--schedule/
--solver, the bundle's defaults and its fitted schedules; requests it cannot serve get one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from discodiff.runtime.contract import ModelMeta
from discodiff.runtime.plan import UNFITTED_BEST, PlanError, resolve_plan
from discodiff.runtime.schedule import logsnr_steps, sigma_steps

META = ModelMeta((2,), 1, 8, 0)
FIT8 = [80.0, 20.0, 5.0, 1.2, 0.3, 0.07, 0.02, 0.005, 0.0]
SAMPLING = {"solver": "heun", "steps": 18, "schedule": "edm", "fitted": {"8": {"solver": "dpm2m", "nfe": 8, "sigmas": FIT8}}}


def test_defaults_are_the_bundles():
    p = resolve_plan(META, SAMPLING)
    assert (p.solver, p.schedule, p.steps, p.nfe) == ("heun", "edm", 18, 35)
    np.testing.assert_array_equal(p.sigmas, sigma_steps(18))


def test_nfe_takes_the_fitted_schedule_and_its_solver():
    p = resolve_plan(META, SAMPLING, nfe=8)
    assert (p.solver, p.schedule, p.nfe) == ("dpm2m", "fitted", 8)
    np.testing.assert_array_equal(p.sigmas, FIT8)
    assert resolve_plan(META, SAMPLING, nfe=8, solver="ipndm").solver == "ipndm"     # any combination


def test_nfe_without_a_fit_uses_the_named_schedule():
    p = resolve_plan(META, SAMPLING, nfe=6, solver="dpm3m", schedule="logsnr")
    assert (p.steps, p.nfe) == (6, 6)
    np.testing.assert_array_equal(p.sigmas, logsnr_steps(6))
    h = resolve_plan(META, SAMPLING, nfe=9, solver="heun")   # heun named: 9 calls = 5 levels, the table's schedule
    assert (h.solver, h.steps, h.nfe, h.schedule) == ("heun", 5, 9, "logsnr")
    assert resolve_plan(META, SAMPLING, nfe=8, schedule="edm", solver="euler").schedule == "edm"   # a fit exists, edm asked for


@pytest.mark.parametrize("kw, words", [
    (dict(schedule="fitted", nfe=6), "discodiff-fit --bundle B --nfe 6"),
    (dict(schedule="fitted"), "needs nfe"),
    (dict(schedule="fitted", steps=8), "give nfe, not steps"),
    (dict(nfe=8, steps=8), "not both"),
    (dict(nfe=6, solver="heun"), "odd"),         # heun cannot make 6 calls
    (dict(nfe=3), "below 4"),                    # nothing measured there: fit it or name both halves
    (dict(nfe=3, solver="euler"), "below 4"),
    (dict(steps=3, solver="heun"), "noise"),     # measured: heun on 3 levels (5 calls) gives noise
    (dict(nfe=5, solver="heun"), "noise"),
    (dict(solver="rk4"), "rk4"),
    (dict(schedule="cosine"), "cosine"),
])
def test_requests_it_cannot_serve(kw, words):
    with pytest.raises(PlanError) as exc:
        resolve_plan(META, SAMPLING, bundle="B", **kw)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("nfe, want", [(5, ("ipndm", "edm", 5)), (6, ("dpm2m", "logsnr", 6)),
                                       (7, ("dpm2m", "logsnr", 7)), (12, ("unipc", "logsnr", 12)),
                                       (4, ("euler", "edm", 4)), (40, ("dpm3m", "logsnr", 40))])
def test_nfe_without_a_fit_takes_the_best_measured_setting_and_says_so(nfe, want):
    p = resolve_plan(META, SAMPLING, nfe=nfe, bundle="B")      # the bundle's own solver is heun: never used for --nfe
    assert (p.solver, p.schedule, p.nfe) == want
    assert f"discodiff-fit --bundle B --nfe {nfe}" in p.note and p.solver in p.note and "\n" not in p.note
    assert resolve_plan(META, SAMPLING, nfe=8).note == ""       # fitted: nothing to say
    assert resolve_plan(META, SAMPLING, nfe=3, solver="euler", schedule="edm").nfe == 3    # both named: the user's call


def test_unfitted_table_is_what_the_frontier_results_say():
    """UNFITTED_BEST is the rule in its comment applied to the frontier benchmark's results files."""
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    grids = []
    for data in ("shapes", "toy8"):
        d = json.loads((results / f"frontier-{data}-amd-epyc-2c.json").read_text())
        for model in ("disco", "plain"):
            grids.append({(r["nfe"], r["solver"], r["schedule"]): r["teacher_rmse"]
                          for r in d["models"][model]["rmse_grid"] if r["schedule"] != "fitted"})
    counts = sorted({k[0] for g in grids for k in g})
    assert sorted(UNFITTED_BEST) == counts
    for n in counts:
        combos = {k[1:] for g in grids for k in g if k[0] == n}
        best = {c: max(g.get((n, *c), np.inf) / min(v for k, v in g.items() if k[0] == n) for g in grids)
                for c in combos}
        assert UNFITTED_BEST[n] == min(best, key=best.get), n
