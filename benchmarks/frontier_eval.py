"""One model's side of the frontier benchmark: its bundle's graphs on ONNX Runtime (what deploys, opened
as a Pipeline), evaluation draws and their prior tokens (made once, shared by every row), the Heun teacher
on them, schedules fitted per solver, and per row (solver, schedule, calls): samples, teacher RMSE and
end-to-end latency at batch 32. Quality measures proper (FD_cls, W2, ...) are the driver's.
"""
from __future__ import annotations

import time

import numpy as np

from discodiff.benchmarks.common import sample_draws, timed
from discodiff.runtime import Pipeline
from discodiff.runtime.draws import draw
from discodiff.runtime.fit.model import conditioned_denoiser
from discodiff.runtime.fit.schedule import GRID, fit, teacher, teacher_x0
from discodiff.runtime.sampling import prior_tokens
from discodiff.runtime.schedule import schedule_steps
from discodiff.runtime.solvers import steps_for

EVAL_SEED = 3_000_000_000          # away from users' seeds and from the fitter's calibration seeds
CAL_SEED = 1_000_000_000


class ModelEval:
    def __init__(self, bundle, n_eval: int, n_teacher: int, n_cal: int, log=print):
        # every core, spinning: the machine is this benchmark's alone
        self.pipe = Pipeline.open(bundle, backend="ort", precision="fp32", spin="on")
        self.model, man = self.pipe.model, self.pipe.manifest
        self.meta, self.log = self.model.meta, log
        self.batch = man.sampling_batch_max                       # rows per prior call; the denoiser takes 2x
        self.den_batch = man.graph("denoiser").batch.max
        t0 = time.perf_counter()
        self.d = draw(np.arange(EVAL_SEED, EVAL_SEED + n_eval), self.meta)
        self.tokens = self._tokens(self.d)
        self.n_teacher = n_teacher
        self.D_teacher = conditioned_denoiser(self.model, self.d.take(slice(0, n_teacher)), self.tokens[:n_teacher],
                                              self.den_batch)
        self.x0_teacher = teacher_x0(self.D_teacher, self.d.noise[:n_teacher], grid=GRID, **self._range())
        cal = draw(np.arange(CAL_SEED, CAL_SEED + n_cal), self.meta)
        self.cal_noise = cal.noise
        self.D_cal = conditioned_denoiser(self.model, cal, self._tokens(cal), self.den_batch)
        self.traj = teacher(self.D_cal, cal.noise, grid=GRID, **self._range())
        log(f"  teacher (Heun, {2 * GRID - 1} calls) on {n_teacher} evaluation and {n_cal} calibration samples: "
            f"{time.perf_counter() - t0:.0f} s")

    def close(self) -> None:
        self.pipe.close()

    def _range(self) -> dict:
        return {"sigma_min": self.meta.sigma_min, "sigma_max": self.meta.sigma_max}

    def _tokens(self, d) -> np.ndarray:
        return np.concatenate([prior_tokens(self.model, d.take(slice(i, i + self.batch)))
                               for i in range(0, len(d.seeds), self.batch)])

    # ----------------------------------------------------------------------------------- schedules
    def sigmas(self, solver: str, schedule: str, nfe: int, fitted: dict) -> np.ndarray | None:
        """Levels for this row, or None where the solver cannot make exactly `nfe` calls (Heun: odd only)."""
        try:
            steps = steps_for(solver, nfe)
        except ValueError:
            return None
        if schedule == "fitted":
            return np.asarray(fitted[(solver, nfe)]["sigmas"]) if (solver, nfe) in fitted else None
        return schedule_steps(schedule, steps, self.meta.sigma_min, self.meta.sigma_max, self.meta.rho)

    def fit(self, solver: str, nfe: int, refine: int) -> dict:
        return fit(self.D_cal, self.cal_noise, nfe=nfe, solver=solver, grid=GRID, refine=refine,
                   teacher_traj=self.traj, **self._range())

    # ----------------------------------------------------------------------------------- rows
    def sample(self, solver: str, sigmas: np.ndarray, n: int) -> np.ndarray:
        """The first n evaluation samples with this solver and these levels (their own tokens)."""
        xs = [sample_draws(self.pipe, self.d.take(slice(i, min(i + self.batch, n))), solver=solver, sigmas=sigmas,
                           tokens=self.tokens[i:min(i + self.batch, n)]).x for i in range(0, n, self.batch)]
        return np.concatenate(xs)

    def teacher_rmse(self, solver: str, sigmas: np.ndarray) -> float:
        x = self.sample(solver, sigmas, self.n_teacher)
        return float(np.sqrt(np.mean((x.astype(np.float64) - self.x0_teacher) ** 2)))

    def latency_ms(self, solver: str, sigmas: np.ndarray, batch: int = 32, repeats: int = 3) -> float:
        """End to end (prior tokens + ODE) for `batch` samples (at most the bundle's limit), median of
        `repeats`, ms per sample."""
        batch = min(batch, self.batch)
        d = draw(np.arange(batch), self.meta)
        ts, _ = timed(lambda: sample_draws(self.pipe, d, solver=solver, sigmas=sigmas), repeats)
        return 1000 * float(np.median(ts)) / batch
