"""What a sampling request resolves to: a solver, the noise levels and the number of denoiser calls,
from the options given, the bundle's defaults and the schedules fitted to its model.

    --steps N                 N levels of the schedule (EDM rho by default); calls = nfe(solver, N)
    --nfe N                   exactly N calls: the schedule fitted for N if the bundle has one (its
                              solver unless --solver says otherwise), else the named schedule
    --schedule edm|logsnr|fitted   and --solver: any combination

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


@dataclass(frozen=True)
class Plan:
    solver: str
    schedule: str
    sigmas: np.ndarray          # float64 levels ending in 0
    nfe: int                    # denoiser calls per sample

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def describe(self) -> dict:
        return {"solver": self.solver, "schedule": self.schedule, "steps": self.steps, "nfe_per_sample": self.nfe,
                "sigmas": [float(s) for s in self.sigmas]}


def plan(meta: ModelMeta, sampling: dict, *, solver: str | None = None, schedule: str | None = None,
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
    if schedule is None:
        schedule = "fitted" if nfe is not None and str(nfe) in fitted else sampling.get("schedule", "edm")
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
    solver = solver or sampling["solver"]
    if nfe is not None:
        try:
            steps = steps_for(solver, nfe)
        except ValueError as e:
            raise PlanError(f"{e}; or choose a solver with one call per level: euler, dpm2m, dpm3m, ipndm, unipc") from None
    steps = steps or sampling["steps"]
    if steps < 1:
        raise PlanError("steps must be >= 1")
    sigmas = schedule_steps(schedule, steps, meta.sigma_min, meta.sigma_max, meta.rho)
    return Plan(solver, schedule, sigmas, solver_nfe(solver, steps))
