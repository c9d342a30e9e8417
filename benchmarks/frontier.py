"""The quality-calls-latency frontier: how few denoiser calls keep the samples, for DisCo-Diff and its
plain twin (--latents 0, same size and training budget), on toy8 and shapes.

    python benchmarks/frontier.py                    # both data sets; trains / exports what is missing
    python benchmarks/frontier.py --only toy8 --quick

Every row runs the deployed thing: the bundle's graphs on ONNX Runtime through the one sampling core,
with every sample's own draws and prior tokens. Calls in {4, 5, 6, 8, 10, 12, 16, 35}; schedules EDM
rho=7, uniform log-sigma, and fitted to the model (runtime.fit.schedule; Heun only where the count is
odd). Teacher: Heun, 255 calls on a fine log-sigma grid, from the same seeds and tokens.
- toy8: every solver x schedule: excess W2 (plain and count-matched), excess off-mode share, teacher RMSE.
- shapes: teacher RMSE for every solver x schedule; then each of the best solvers on its best schedule,
  and Heun / Euler on EDM rho=7 (the baseline), with FD_cls (Frechet distance in the features of a
  classifier trained here on real images; excess over the real-vs-real floor at the same n) and class
  adherence. End-to-end latency (prior + ODE, batch 32, ms per sample) for every quality row.
Writes benchmarks/results/frontier-{toy8,shapes}-<machine>.{json,txt,png}.
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from discodiff.benchmarks import quality_metrics as qm
from discodiff.benchmarks.common import Results, add_options, machine_name
from discodiff.benchmarks.frontier_eval import ModelEval
from discodiff.benchmarks.frontier_report import chart, table, targets
from discodiff.runtime.solvers import SOLVERS

CALLS = (4, 5, 6, 8, 10, 12, 16, 35)
SCHEDULES = ("edm", "logsnr", "fitted")
BASELINES = (("heun", "edm"), ("euler", "edm"))
TOY_RADIUS, TOY_STD = 3.0, 0.2         # the toy8 preset's mixture: off-mode means farther than 3 std
MODELS = {  # data set -> variant -> (run directory under --work, train arguments when missing)
    "toy8": {"disco": ("toy8-disco", ["--preset", "toy8"]), "plain": ("toy8-plain", ["--preset", "toy8", "--latents", "0"])},
    "shapes": {"disco": ("../shapes", []), "plain": ("shapes-plain", ["--latents", "0"])},   # the demo's run is DisCo
}


def model_specs(name: str, quick: bool, work: Path) -> dict:
    if not quick:
        return {v: (work / d, args) for v, (d, args) in MODELS[name].items()}
    preset = f"{name}-tiny"
    return {"disco": (work / f"{name}-disco", ["--preset", preset]),
            "plain": (work / f"{name}-plain", ["--preset", preset, "--latents", "0"])}


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_bundle(run_dir: Path, train_args: list[str], quick: bool) -> Path:
    bin_dir = Path(sys.executable).parent
    if not (run_dir / "model.safetensors").exists():
        args = train_args + (["--steps", "60", "--prior-steps", "30"] if quick else [])
        log(f"training {run_dir} ({' '.join(args) or 'default'}) ...")
        subprocess.run([str(bin_dir / "discodiff-train"), *args, "--out", str(run_dir), "--quiet"], check=True)
    if not (run_dir / "bundle" / "manifest.json").exists():
        log(f"exporting {run_dir} ...")
        subprocess.run([str(bin_dir / "discodiff-export"), "--checkpoint", str(run_dir / "model.safetensors"),
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return run_dir / "bundle"


def rmse_grid(ev: ModelEval, fitted: dict, calls) -> list[dict]:
    rows = []
    for solver in SOLVERS:
        for schedule in SCHEDULES:
            for n in calls:
                if schedule == "fitted" and (solver, n) not in fitted:
                    continue
                sig = ev.sigmas(solver, schedule, n, fitted)
                if sig is not None:
                    rows.append({"solver": solver, "schedule": schedule, "nfe": n, "sigmas": sig.tolist(),
                                 "teacher_rmse": ev.teacher_rmse(solver, sig)})
    return rows


def best_schedules(rows: list[dict]) -> dict[str, str]:
    """Per solver, the schedule with the lowest mean log teacher RMSE over the few-call counts (<= 16) that
    every schedule of that solver has a row for (fitted schedules may stop below 16 calls)."""
    best = {}
    for solver in SOLVERS:
        mine = [r for r in rows if r["solver"] == solver and r["nfe"] <= 16]
        per = {sch: {r["nfe"]: r["teacher_rmse"] for r in mine if r["schedule"] == sch} for sch in SCHEDULES}
        per = {sch: errs for sch, errs in per.items() if errs}
        common = set.intersection(*(set(e) for e in per.values())) if per else set()
        if common:                      # Heun has no few-call row when every count asked for is even
            scores = {sch: float(np.mean([np.log(e[n]) for n in common])) for sch, e in per.items()}
            best[solver] = min(scores, key=scores.get)
    return best


# ---------------------------------------------------------------------------------------------
# Quality per data set


@functools.lru_cache(maxsize=None)
def _toy_floors(n: int) -> tuple[float, float, float]:
    """Truth-vs-truth W2, its count-matched twin and the truth's own off-mode share at this n (per n once)."""
    from discodiff.data import toy8, toy8_centres

    centres = toy8_centres(TOY_RADIUS)
    first = toy8(n, 10_001).x
    with _pool() as pool:                     # exact W2 is one single-threaded assignment: one per core
        floor, floor_m = pool.map(qm.w2, (first, first),
                                  (toy8(n, 20_001).x, qm.matched_reference(first, centres, TOY_STD, 50_001)))
    return floor, floor_m, qm.off_mode_share(toy8(n, 30_001).x, centres, 3 * TOY_STD)


def _pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))


def toy_quality(x: np.ndarray, n: int, pool) -> dict:
    from discodiff.data import toy8, toy8_centres

    floor, floor_m, truth_off = _toy_floors(n)
    centres = toy8_centres(TOY_RADIUS)
    w, wm = pool.map(qm.w2, (x, x), (toy8(n, 40_001).x, qm.matched_reference(x, centres, TOY_STD, 60_001)))
    return {"excess_w2": qm.excess(w, floor), "excess_w2_matched": qm.excess(wm, floor_m),
            "excess_off_mode": max(qm.off_mode_share(x, centres, 3 * TOY_STD) - truth_off, 0.0)}


class ImageJudge:
    """FD_cls and class adherence of shapes samples, with the real-vs-real floor at the same n."""

    def __init__(self, res: int, n: int, quick: bool):
        import torch

        from discodiff.benchmarks.classifier import features, train_classifier
        from discodiff.data import shapes

        torch.manual_seed(0)
        self.clf, self.acc = train_classifier(res, 2000 if quick else 12000, 60 if quick else 600, log)
        self.real = features(self.clf, shapes(n, res, seed=701).x)
        self.floor = qm.frechet(features(self.clf, shapes(n, res, seed=702).x), self.real)

    def __call__(self, x: np.ndarray, labels: np.ndarray) -> dict:
        from discodiff.benchmarks.classifier import N_COLOURS, classify, features

        pred, _ = classify(self.clf, x)
        fd = qm.frechet(features(self.clf, x), self.real)
        return {"fd_cls": fd, "fd_cls_excess": fd - self.floor, "class_adherence": float(np.mean(pred // N_COLOURS == labels))}


# ---------------------------------------------------------------------------------------------


def run_dataset(name: str, a) -> dict:
    t0 = time.time()
    calls = (4, 6, 8, 35) if a.quick else CALLS
    fit_calls = [n for n in calls if n <= a.fit_up_to]
    n = a.n or ((200 if name == "toy8" else 64) if a.quick else (4000 if name == "toy8" else 2000))
    judge = ImageJudge(16 if not a.quick else 8, n, a.quick) if name == "shapes" else None
    out = {"data": name, "n": n, "calls": list(calls), "models": {}}
    pool = _pool() if name == "toy8" else None
    for variant, (run_dir, train_args) in model_specs(name, a.quick, a.work).items():
        bundle = ensure_bundle(Path(run_dir), train_args, a.quick)
        log(f"{name} {variant}: {bundle}")
        ev = ModelEval(bundle, n, min(a.n_teacher, n), a.n_cal, log)
        try:
            t1 = time.time()
            fitted = {(s, k): ev.fit(s, k, a.refine) for s in SOLVERS for k in fit_calls if ev.sigmas(s, "edm", k, {}) is not None}
            log(f"  fitted {len(fitted)} schedules in {time.time() - t1:.0f} s")
            grid = rmse_grid(ev, fitted, calls)
            best = best_schedules(grid)
            log("  best schedule per solver: " + ", ".join(f"{s} {sch}" for s, sch in best.items()))
            if name == "toy8":
                quality_rows = [(r["solver"], r["schedule"]) for r in grid]
                quality_rows = list(dict.fromkeys(quality_rows))
            else:
                def score(s):   # the mean teacher RMSE on its best schedule at 5-8 calls
                    errs = [r["teacher_rmse"] for r in grid if r["solver"] == s and r["schedule"] == best.get(s)
                            and r["nfe"] in (4, 5, 6, 8)]
                    return np.mean(errs) if errs else np.inf
                ranked = sorted(best, key=score)
                quality_rows = list(dict.fromkeys([(s, best[s]) for s in ranked[:a.fd_solvers]] + list(BASELINES)))
            rows = []
            for solver, schedule in quality_rows:
                for k in calls:
                    sig = ev.sigmas(solver, schedule, k, fitted)
                    if sig is None or (k > 16 and (solver, schedule) not in BASELINES):   # 35 calls: the baselines
                        continue
                    x = ev.sample(solver, sig, n)
                    q = toy_quality(x, n, pool) if name == "toy8" else judge(x, ev.d.labels[:n])
                    rmse = next(r["teacher_rmse"] for r in grid if (r["solver"], r["schedule"], r["nfe"]) == (solver, schedule, k))
                    rows.append({"solver": solver, "schedule": schedule, "nfe": k, "teacher_rmse": rmse, **q,
                                 "ms_per_sample": ev.latency_ms(solver, sig)})
                    log(f"  {variant} {solver:5s} {schedule:6s} {k:2d} calls: teacher RMSE {rmse:.4f} "
                        + " ".join(f"{key} {v:.4f}" for key, v in q.items()) + f"  {rows[-1]['ms_per_sample']:.2f} ms/sample")
            out["models"][variant] = {"bundle": str(bundle), "rmse_grid": grid, "best_schedule": best, "rows": rows,
                                      "fits": {f"{s}/{k}": {kk: v for kk, v in f.items() if kk != "sigmas"}
                                               for (s, k), f in fitted.items()}}
        finally:
            ev.close()
    if pool is not None:
        pool.shutdown()
    if judge is not None:
        out.update(classifier_accuracy=judge.acc, fd_floor=judge.floor)
    out["targets"] = targets(out)
    out["seconds"] = time.time() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("toy8", "shapes"), default=None)
    ap.add_argument("--n", type=int, default=None, help="samples per quality row (default 4000 toy8, 2000 shapes)")
    ap.add_argument("--n-teacher", type=int, default=256, help="samples for the teacher RMSE")
    ap.add_argument("--n-cal", type=int, default=64, help="calibration samples for the fitted schedules")
    ap.add_argument("--fit-up-to", type=int, default=16,
                    help="fit schedules for call counts up to this (each fit costs ~8 x calls^2 denoiser calls)")
    ap.add_argument("--refine", type=int, default=1, help="coordinate-descent sweeps per move size in the fit")
    ap.add_argument("--fd-solvers", type=int, default=3, help="shapes: the best solvers given FD_cls rows")
    ap.add_argument("--work", type=Path, default=None,
                    help="where the compared models are trained (default runs/frontier; the shapes DisCo model is "
                         "the demo's runs/shapes)")
    add_options(ap, quick="tiny models and few samples: a smoke run")
    a = ap.parse_args()
    a.work = a.work or Path("runs/frontier-quick" if a.quick else "runs/frontier")
    results = Results(a.out_dir, "frontier", a.machine or machine_name())
    for name in (a.only,) if a.only else ("toy8", "shapes"):
        res = run_dataset(name, a)
        results.publish(res, table(res), name + ("-quick" if a.quick else ""), chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
