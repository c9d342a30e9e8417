"""What the discrete latents buy: DisCo-Diff against a plain EDM model of the same size and budget.

    python benchmarks/quality.py                  # toy8 (the paper's toy) and shapes; trains what it needs
    python benchmarks/quality.py --only toy8 --toy-disco runs/toy8/model.safetensors
    python benchmarks/quality.py --data my_vectors.npy    # the toy report for any vector data set
    python benchmarks/quality.py --quick          # smoke run on the tiny presets (tests use it)

Toy: 2-Wasserstein distance to fresh ground truth by exact optimal assignment (n points, 3 seeds) with
the truth-vs-truth floor and the excess over it, off-mode share and mode balance, latent purity and
code use, and ODE-trajectory curvature, at Heun and Euler NFE 5..99. Images (shapes): a classifier
trained here on real images labels generated samples; label histograms, confidence, class adherence,
and the agreement of the learned tokens with the true colour and shape (NMI).
Writes benchmarks/results/quality-{toy8,shapes}-<machine>.json and PNGs (quality-toy8-{scatter,w2,curvature}-
<machine>.png, quality-shapes-grids-<machine>.png).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from discodiff import presets
from discodiff.benchmarks import quality_metrics as qm
from discodiff.benchmarks.common import Results, Target, add_options, machine_name, pyplot, sample_draws, save_figure
from discodiff.checkpoint import load_model
from discodiff.config import DataSpec, replace
from discodiff.data import load, spec_for_path, toy8, toy8_centres
from discodiff.runtime import Pipeline
from discodiff.runtime.schedule import sigma_steps
from discodiff.sampling import TorchModel, sample
from discodiff.train.dist import Dist
from discodiff.train.loop import train

HEUN_STEPS = (3, 5, 10, 18, 50)          # NFE 5, 9, 19, 35, 99
EULER_STEPS = (5, 9, 19, 35, 99)         # the same NFE
TOY_STD, TOY_RADIUS = 0.2, 3.0
OFF_MODE = 3 * TOY_STD                   # farther than 3 std from every centre


def log(msg: str) -> None:
    print(msg, flush=True)


def train_or_load(path: Path | None, work: Path, name: str, preset: str, latents: int, steps: int | None,
                  ds=None, spec: DataSpec | None = None, denoiser: dict | None = None):
    """Load `path` if given, else train `preset` (or `ds`) with `latents` into work/name (reused if there)."""
    if path is not None:
        return load_model(path)[0]
    out = work / name
    if (out / "model.safetensors").exists():
        log(f"reusing {out / 'model.safetensors'}")
        return load_model(out / "model.safetensors")[0]
    if ds is None:
        spec, model_cfg, tc = presets.get(preset)
        ds = load(spec)
    else:
        model_cfg, tc = presets.model_for(ds)
    model_cfg = replace(model_cfg, m=latents, latent_dropout=model_cfg.latent_dropout if latents else 0.0)
    if denoiser:
        model_cfg = replace(model_cfg, denoiser=replace(model_cfg.denoiser, **denoiser))
    tc = replace(tc, steps=steps or tc.steps, sample_every=0)
    log(f"training {name}: {preset or 'data'} m={latents}, {tc.steps} steps ...")
    t0 = time.time()
    train(out, ds, model_cfg, tc, Dist(), {"benchmark": "quality", "name": name}, progress=False)
    log(f"  {time.time() - t0:.0f} s")
    return load_model(out / "model.safetensors")[0]


# ---------------------------------------------------------------------------------------------
# Toy


def nfe(solver: str, steps: int) -> int:
    return 2 * steps - 1 if solver == "heun" else steps


def toy_eval(models: dict, truth, n: int, seeds: list[int], grid: list[tuple[str, int]], known: bool) -> dict:
    """W2 / excess / off-mode / mode TV / purity for each model and (solver, steps)."""
    floors = [qm.w2(truth(n, 10_000 + s), truth(n, 20_000 + s)) for s in seeds]
    centres = toy8_centres(TOY_RADIUS)
    truth_off = [qm.off_mode_share(truth(n, 30_000 + s), centres, OFF_MODE) for s in seeds] if known else None
    if known:
        # Count-matched W2: the reference is redrawn with the sample's own per-component counts, so the
        # multinomial count noise that dominates W2 at this n (and the mode weights, reported as mode_tv)
        # drops out and what is left measures the shape of each mode. Its floor: truth vs truth redrawn
        # with the first set's counts.
        def matched_ref(x, seed):
            return qm.matched_reference(x, centres, TOY_STD, seed)

        first = {s: truth(n, 10_000 + s) for s in seeds}       # the first set of each floor pair above
        floors_m = [qm.w2(first[s], matched_ref(first[s], 50_000 + s)) for s in seeds]
    rows = []
    for name, model in models.items():
        for solver, steps in grid:
            per = []
            for s in seeds:
                out = sample(model, np.arange(n) + 100_000 * (s + 1), steps=steps, solver=solver, batch=n)
                ref = truth(n, 40_000 + s)
                w = qm.w2(out.x, ref)
                r = {"w2": w, "excess_w2": qm.excess(w, floors[seeds.index(s)])}
                if known:
                    off = qm.off_mode_share(out.x, centres, OFF_MODE)
                    wm = qm.w2(out.x, matched_ref(out.x, 60_000 + s))
                    r.update(w2_matched=wm, excess_w2_matched=qm.excess(wm, floors_m[seeds.index(s)]))
                    r.update(off_mode=off, excess_off_mode=max(off - truth_off[seeds.index(s)], 0.0),
                             mode_tv=qm.mode_tv(out.x, centres))
                    if model.cfg.m:
                        comp = qm.nearest(out.x, centres)[0]
                        r.update(purity=qm.purity(out.tokens[:, 0], comp),
                                 code_shares=qm.code_shares(out.tokens[:, 0], model.cfg.k))
                per.append(r)
            agg = {"model": name, "solver": solver, "steps": steps, "nfe": nfe(solver, steps)}
            for key in per[0]:
                if key == "code_shares":
                    agg[key] = np.mean([p[key] for p in per], axis=0).round(4).tolist()
                else:
                    vals = [p[key] for p in per]
                    agg[key], agg[key + "_std"] = float(np.mean(vals)), float(np.std(vals))
            rows.append(agg)
            log(f"  {name:6s} {solver:5s} NFE {agg['nfe']:3d}: W2 {agg['w2']:.3f} excess {agg['excess_w2']:.3f}"
                + (f" (count-matched {agg['excess_w2_matched']:.3f}) off-mode {100 * agg['off_mode']:.2f}%" if known else "")
                + (f" purity {agg['purity']:.3f}" if "purity" in agg else ""))
    out = {"floor_w2": float(np.mean(floors)), "floor_w2_std": float(np.std(floors)), "rows": rows}
    if known:
        out["truth_off_mode"] = float(np.mean(truth_off))
        out["floor_w2_matched"] = float(np.mean(floors_m))
    return out


def trajectories(model, n: int, steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Heun trajectories of n samples, [steps+1, n, d] states, and the noise level of each state."""
    from discodiff.runtime.draws import draw

    tm = TorchModel(model)
    d = draw(np.arange(n) + 7_000_000, tm.meta)
    sig = sigma_steps(steps)
    states = [d.noise * np.float32(sig[0])]
    with torch.no_grad():
        sample_draws(Pipeline(tm), d, solver="heun", sigmas=sig, callback=lambda i, x: states.append(x.numpy().copy()))
    return np.stack(states), sig


def toy_targets(res: dict, suffix: str = "") -> list[Target]:
    """The issue's targets for the pair disco{suffix} / plain{suffix}."""
    rows = {(r["model"], r["solver"], r["nfe"]): r for r in res["rows"]}
    dn, pn = "disco" + suffix, "plain" + suffix
    size = f" [{suffix.strip('-')} denoiser]" if suffix else ""
    out = []

    def add(name, value, ok):
        out.append(Target(name + size, value, ok))

    d, p = rows.get((dn, "heun", 99)), rows.get((pn, "heun", 99))
    if d and p:
        add("50 Heun steps: DisCo excess W2 <= 0.5 x plain (ratio)", d["excess_w2"] / max(p["excess_w2"], 1e-9),
            d["excess_w2"] <= 0.5 * p["excess_w2"])
        add("50 Heun steps: DisCo excess off-mode <= 0.5 x plain (ratio)",
            d["excess_off_mode"] / max(p["excess_off_mode"], 1e-9), d["excess_off_mode"] <= 0.5 * p["excess_off_mode"])
        add("50 Heun steps: latent purity >= 0.95", d["purity"], d["purity"] >= 0.95)
        used = int(np.sum(np.array(d["code_shares"]) > 0.01))
        add("50 Heun steps: all 8 codes in use (share > 1%)", used, used == 8)
    # At <= 10 NFE: the better DisCo solver (Heun's first steps from sigma 80 are poor at so few NFE,
    # Euler's are not) against plain Heun at 35 NFE, on both measures at once.
    p35 = rows.get((pn, "heun", 35))
    low = [r for (mdl, _, f), r in rows.items() if mdl == dn and f <= 10]
    if p35 and low:
        best = min(low, key=lambda r: ((r["excess_w2"] > p35["excess_w2"]) + (r["excess_off_mode"] > p35["excess_off_mode"]),
                                       r["excess_w2"]))
        tag = f"DisCo {best['solver'].capitalize()} NFE {best['nfe']}"
        add(f"{tag} excess W2 <= plain Heun NFE 35 (difference)", best["excess_w2"] - p35["excess_w2"],
            best["excess_w2"] <= p35["excess_w2"])
        add(f"{tag} excess off-mode <= plain Heun NFE 35 (difference)",
            best["excess_off_mode"] - p35["excess_off_mode"], best["excess_off_mode"] <= p35["excess_off_mode"])
    return out


def toy_plots(models: dict, res: dict, curv: dict, png, ref: np.ndarray, n: int) -> None:
    """png(kind) -> the path of that chart."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 9), dpi=100, squeeze=False)
    for j, (name, model) in enumerate(models.items()):
        # Top: 9 Euler steps, where the latents matter most; bottom: 50 Heun steps (NFE 99).
        for i, (solver, steps) in enumerate((("euler", 9), ("heun", 50))):
            s = sample(model, np.arange(n) + 5_000_000, steps=steps, solver=solver, batch=n)
            ax = axes[i, j]
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="lightgrey")
            if model.cfg.m:
                ax.scatter(s.x[:, 0], s.x[:, 1], s=1, c=s.tokens[:, 0], cmap="tab10", vmin=0, vmax=9)
            else:
                ax.scatter(s.x[:, 0], s.x[:, 1], s=1, c="tab:blue")
            ax.set_title(f"{name}: {solver.capitalize()} {steps} steps (NFE {nfe(solver, steps)})", fontsize=10)
            ax.set_aspect("equal")
            ax.set_xlim(-4.5, 4.5)
            ax.set_ylim(-4.5, 4.5)
    save_figure(fig, png("scatter"))

    panels = [("excess_w2", "excess W2 over the truth-vs-truth floor"), ("off_mode", "off-mode share")]
    if any("excess_w2_matched" in r for r in res["rows"]):
        panels.insert(1, ("excess_w2_matched", "excess W2, count-matched reference"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), dpi=100)
    for (key, title), ax in zip(panels, axes):
        for name in models:
            for solver, ls in (("heun", "-"), ("euler", "--")):
                rows = [r for r in res["rows"] if r["model"] == name and r["solver"] == solver and key in r]
                if rows:
                    ax.plot([r["nfe"] for r in rows], [r[key] for r in rows], ls, marker="o", label=f"{name} {solver}")
        if key == "off_mode" and "truth_off_mode" in res:
            ax.axhline(res["truth_off_mode"], color="grey", lw=1, ls=":", label="true mixture")
        ax.set_xscale("log")
        # Heun's few-step failures would flatten the rest on a linear axis
        ax.set_yscale("symlog", linthresh=1e-3 if key == "off_mode" else 1e-2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("NFE")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, png("w2"))

    if curv:
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
        for name, (k, sig) in curv.items():
            ax.plot(sig[1:-1], k, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("noise level sigma (sampling runs right to left)")
        ax.set_ylabel("mean curvature")
        ax.set_title("ODE trajectory curvature (Heun, 100 steps)", fontsize=10)
        ax.legend()
        ax.grid(alpha=0.3)
        save_figure(fig, png("curvature"))


def run_toy(a, results: Results) -> dict:
    quick = a.quick
    n = a.n or (200 if quick else 4000)
    seeds = [0] if quick else [0, 1, 2]
    grid = ([("heun", 3), ("heun", 5), ("heun", 18), ("heun", 50), ("euler", 9)] if quick else
            [("heun", s) for s in HEUN_STEPS] + [("euler", s) for s in EULER_STEPS])
    work = a.work / ("toy8-quick" if quick else "toy8")
    if a.data:
        ds = load(spec_for_path(a.data))
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(ds))
        n = min(n, len(ds) // 3)
        held, ds.x = ds.x[perm[:2 * n]], ds.x[perm[2 * n:]]
        truth = lambda k, s: held[np.random.default_rng(s).permutation(len(held))[:k]]  # noqa: E731
        known, variant = False, Path(a.data).stem
        models = {"disco": train_or_load(a.toy_disco, work, "disco", "", 1, a.toy_steps, ds=ds),
                  "plain": train_or_load(a.toy_plain, work, "plain", "", 0, a.toy_steps, ds=ds)}
    else:
        preset = "toy8-tiny" if quick else "toy8"
        truth = lambda k, s: toy8(k, s).x  # noqa: E731
        known, variant = True, "toy8" + ("-quick" if quick else "")
        models = {"disco": train_or_load(a.toy_disco, work, "disco", preset, 1, a.toy_steps),
                  "plain": train_or_load(a.toy_plain, work, "plain", preset, 0, a.toy_steps)}
        if a.toy_small and not quick:
            # The same pair with a small denoiser (MLP 64 x 2 instead of 256 x 4): where the plain model
            # lacks the capacity to separate the modes sharply, which is the paper's toy setting.
            small = {"width": 64, "depth": 2}
            models["disco-small"] = train_or_load(None, work, "disco-small", preset, 1, a.toy_steps, denoiser=small)
            models["plain-small"] = train_or_load(None, work, "plain-small", preset, 0, a.toy_steps, denoiser=small)
    log(f"toy evaluation: n={n}, seeds {seeds}")
    res = toy_eval(models, truth, n, seeds, grid, known)
    curv = {}
    for name, model in models.items():
        traj, sig = trajectories(model, min(n, 1000))
        k = qm.curvature(traj)
        curv[name] = (k, sig)
        res.setdefault("curvature", {})[name] = {"sigma": sig[1:-1].tolist(), "mean_curvature": k.tolist(),
                                                  "overall": float(k.mean())}
    if known:
        res["targets"] = toy_targets(res) + (toy_targets(res, "-small") if "disco-small" in models else [])
    res.update(n=n, seeds=seeds, models={k: {"m": m.cfg.m, "k": m.cfg.k,
                                              "params": sum(p.numel() for p in m.denoiser.parameters())}
                                          for k, m in models.items()})
    toy_plots(models, res, curv, lambda kind: results.path("png", f"{variant}-{kind}"), truth(n, 99), min(n, 2000))
    path = results.write(res, variant=variant, indent=2)
    for t in res.get("targets", []):
        log(t.line())
    log(f"wrote {path} and PNGs")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("toy8", "shapes"), default=None)
    ap.add_argument("--data", type=str, default=None, help="vector data (.npy) for the toy report instead of toy8")
    ap.add_argument("--toy-disco", type=Path, default=None, help="reuse this DisCo-Diff toy checkpoint")
    ap.add_argument("--toy-plain", type=Path, default=None, help="reuse this plain toy checkpoint")
    ap.add_argument("--toy-steps", type=int, default=None, help="training steps for both toy models")
    ap.add_argument("--no-toy-small", dest="toy_small", action="store_false",
                    help="skip the second toy pair with a small (64 x 2) denoiser")
    ap.add_argument("--shapes-disco", type=Path, default=None, help="reuse this DisCo-Diff shapes checkpoint")
    ap.add_argument("--shapes-plain", type=Path, default=None, help="reuse this plain shapes checkpoint")
    ap.add_argument("--shapes-steps", type=int, default=None, help="training steps for both shapes models")
    ap.add_argument("--n", type=int, default=None, help="points per W2 evaluation (default 4000)")
    ap.add_argument("--work", type=Path, default=Path("runs/quality"), help="where trained models are kept")
    add_options(ap, quick="tiny presets, few points: a smoke run")
    a = ap.parse_args()
    for p in (a.toy_disco, a.toy_plain, a.shapes_disco, a.shapes_plain):
        if p is not None and not p.is_file():
            print(f"quality.py: error: checkpoint {p} not found; pass a model.safetensors or drop the option",
                  file=sys.stderr)
            return 2
    if a.n is not None and a.n < 10:
        print("quality.py: error: --n must be >= 10", file=sys.stderr)
        return 2
    a.out_dir.mkdir(parents=True, exist_ok=True)
    results = Results(a.out_dir, "quality", a.machine or machine_name())
    if a.only in (None, "toy8") or a.data:
        run_toy(a, results)
    if a.only in (None, "shapes") and not a.data:
        from discodiff.benchmarks.quality_images import run_shapes

        run_shapes(a, train_or_load, log, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
