"""What a sampling request resolves to: a solver, the noise levels and the number of denoiser calls,
from the options given, the bundle's defaults and the schedules fitted to its model.

    --steps N                 N levels of the schedule (EDM rho by default); calls = nfe(solver, N)
    --nfe N                   the best setting measured for N calls: the schedule fitted for N if the
                              bundle has one (its solver unless --solver says otherwise), else the
                              solver x schedule the frontier benchmark measured best without a fit
                              (UNFITTED_BEST; --solver / --schedule override either half)
    --schedule edm|logsnr|fitted   and --solver: any combination, except settings measured to fail

Shared by `discodiff-run` and the server; a request that cannot be met raises `PlanError` with one line
that says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from discodiff.runtime.contract import ModelMeta
from discodiff.runtime.schedule import SCHEDULES, schedule_steps
from discodiff.runtime.solvers import SOLVERS, nfe as solver_nfe, steps_for

PLAN_SCHEDULES = SCHEDULES + ("fitted",)
FIT_HINT = "fit one with discodiff-fit --bundle {bundle} --nfe {n} (or discodiff-export --fit-nfe {n})"


class PlanError(ValueError):
    """A request the bundle cannot serve (one line: what, why, what to do)."""


# The best training-free setting at each measured call count, where the bundle has no fit for it:
# benchmarks/results/frontier-{shapes,toy8}-amd-epyc-2c.json, teacher RMSE of every solver x {edm, logsnr} on the DisCo
# and plain models of both data sets; the entry minimises the worst ratio to that count's best row over the
# four models (in brackets). A count between two measured ones takes the lower one's entry; below the
# lowest nothing was measured, so it needs a fit. tests/runtime/test_plan.py recomputes this table from
# the results files, so a re-run of the frontier benchmark that changes it fails until it is updated.
UNFITTED_BEST: dict[int, tuple[str, str]] = {
    4: ("euler", "edm"),       # [1.35x]   ipndm/edm 1.37x
    5: ("ipndm", "edm"),       # [1.25x]   euler/edm 1.31x
    6: ("dpm2m", "logsnr"),    # [1.74x]   ipndm/logsnr 1.88x
    8: ("dpm2m", "logsnr"),    # [1.73x]   dpm2m/edm 2.50x
    10: ("dpm2m", "logsnr"),   # [1.51x]   unipc/logsnr 1.58x
    12: ("unipc", "logsnr"),   # [2.74x]   dpm2m/logsnr 3.23x
    16: ("unipc", "logsnr"),   # [3.08x]   dpm3m/logsnr 3.25x
    35: ("dpm3m", "logsnr"),   # [2.29x]   unipc/logsnr 2.35x
}
# Settings measured to fail: Heun on 3 EDM levels (5 calls) gave teacher RMSE 3.6 on shapes and 6.5 on
# toy8 (data std 0.5: the samples are noise), in the same results files. Fewer levels are worse still.
HEUN_MIN_STEPS = 4


def unfitted_best(nfe: int) -> tuple[str, str] | None:
    """(solver, schedule) measured best for `nfe` calls without a fit; None below the lowest measured count."""
    counts = [c for c in UNFITTED_BEST if c <= nfe]
    return UNFITTED_BEST[max(counts)] if counts else None


@dataclass(frozen=True)
class Plan:
    solver: str
    schedule: str
    sigmas: np.ndarray          # float64 levels ending in 0
    nfe: int                    # denoiser calls per sample
    note: str = ""              # one line for the user when the request was mapped (which setting, how to fit)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def describe(self) -> dict:
        return {"solver": self.solver, "schedule": self.schedule, "steps": self.steps, "nfe_per_sample": self.nfe,
                "sigmas": [float(s) for s in self.sigmas]}


def resolve_plan(meta: ModelMeta, sampling: dict, *, solver: str | None = None, schedule: str | None = None,
         steps: int | None = None, nfe: int | None = None, bundle: str = "BUNDLE") -> Plan:
    """Resolve a request against the bundle's `sampling` block (defaults and fitted schedules); `bundle`
    names the bundle in the hint of a missing fit."""
    fitted = sampling.get("fitted") or {}
    if solver is not None and solver not in SOLVERS:
        raise PlanError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if schedule is not None and schedule not in PLAN_SCHEDULES:
        raise PlanError(f"unknown schedule {schedule!r}; choose one of {', '.join(PLAN_SCHEDULES)}")
    if steps is not None and nfe is not None:
        raise PlanError("give the number of levels (steps) or of denoiser calls (nfe), not both")
    if schedule is None and nfe is not None and str(nfe) in fitted:
        schedule = "fitted"
    if schedule == "fitted":
        if nfe is None:
            if steps is not None:
                raise PlanError("a fitted schedule is chosen by its number of denoiser calls: give nfe, not steps")
            raise PlanError(f"the fitted schedule needs nfe (the bundle has fits for {sorted(fitted, key=int) or 'none'})")
        fit = fitted.get(str(nfe))
        if fit is None:
            have = ", ".join(sorted(fitted, key=int)) or "none"
            raise PlanError(f"the bundle has no schedule fitted for {nfe} denoiser calls (it has: {have}); "
                            + FIT_HINT.format(bundle=bundle, n=nfe))
        solver = solver or fit["solver"]
        sigmas = np.asarray(fit["sigmas"], np.float64)
        return Plan(solver, "fitted", sigmas, solver_nfe(solver, len(sigmas) - 1))
    note = ""
    if nfe is not None:
        best = unfitted_best(nfe)
        if best is None and (solver is None or schedule is None):
            raise PlanError(f"no setting was measured below {min(UNFITTED_BEST)} denoiser calls without a fitted "
                            f"schedule, so --nfe {nfe} has no known good choice; "
                            + FIT_HINT.format(bundle=bundle, n=nfe) + ", or name --solver and --schedule")
        if best is not None:
            solver, schedule = solver or best[0], schedule or best[1]
        note = (f"{nfe} calls: {solver} on {schedule} levels (no schedule fitted for {nfe} calls; "
                + FIT_HINT.format(bundle=bundle, n=nfe) + " for a better one)")
        try:
            steps = steps_for(solver, nfe)
        except ValueError as e:
            raise PlanError(f"{e}; or choose a solver with one call per level: euler, dpm2m, dpm3m, ipndm, unipc") from None
    solver = solver or sampling["solver"]
    schedule = schedule or sampling.get("schedule", "edm")
    steps = steps or sampling["steps"]
    if steps < 1:
        raise PlanError("steps must be >= 1")
    if solver == "heun" and steps < HEUN_MIN_STEPS:
        raise PlanError(f"heun on {steps} levels ({solver_nfe(solver, steps)} calls) was measured to give noise, not "
                        f"samples; use at least {HEUN_MIN_STEPS} levels ({solver_nfe(solver, HEUN_MIN_STEPS)} calls), "
                        "or another solver (e.g. --solver dpm2m)")
    sigmas = schedule_steps(schedule, steps, meta.sigma_min, meta.sigma_max, meta.rho)
    return Plan(solver, schedule, sigmas, solver_nfe(solver, steps), note)
