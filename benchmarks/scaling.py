"""How cost grows with model size: the project's networks at published sizes, untrained, through export
and the runtime.

    python benchmarks/scaling.py                           # cifar-size, in64-size, xl (and the shapes default)
    python benchmarks/scaling.py --sizes cifar-size --quick

Per size: parameters, GFLOP per denoiser call, bundle size, export time and peak RSS (the export is a
child process; its manifest records the same), one denoiser call and a short end-to-end run (prior, then
Euler with 4 calls) at batch 1 and 4 for PyTorch eager and the runtime (ONNX Runtime, float32), each in
its own process on the same draws (with initial weights the layers EDM initialises to zero make the
denoiser D(x) = c_skip x and parity trivially exact: --perturb-zero-init changes that); the compute floor (FLOPs / the best float32 matmul rate measured in
the same run) and the prior's share; fp32 parity of the runtime's samples against PyTorch's.
Writes benchmarks/results/scaling[-quick]-<machine>.{json,txt,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from discodiff.benchmarks.common import (Results, Target, add_options, child, machine_name, pyplot, sample_draws,
                                         save_figure, script, timed)

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------
# The timing worker (its own process per backend)


def worker(a) -> None:
    from discodiff.runtime import Pipeline
    from discodiff.runtime.draws import draw
    from discodiff.runtime.sampling import denoiser_fn, prior_tokens
    from discodiff.runtime.schedule import sigma_steps

    if a.backend == "torch":
        import torch

        from discodiff.checkpoint import load_model
        from discodiff.sampling import TorchModel

        pipe = Pipeline(TorchModel(load_model(a.checkpoint)[0]))
        ctx = torch.no_grad()
    else:
        from contextlib import nullcontext

        pipe = Pipeline.open(a.bundle, backend="ort", precision="fp32", spin="on")   # every core, spinning
        ctx = nullcontext()
    model, res, samples = pipe.model, {}, {}
    sig = sigma_steps(4, model.meta.sigma_min, model.meta.sigma_max, model.meta.rho)
    with ctx:
        for b in (1, 4):
            d = draw(np.arange(b), model.meta)
            # one denoiser call apart from the Pipeline, which times only whole calls
            D = denoiser_fn(model, prior_tokens(model, d), d.labels)
            x = model.asarray(d.noise) * 10.0
            calls, _ = timed(lambda: D(x, 10.0), a.repeats)
            out = sample_draws(pipe, d, solver="euler", sigmas=sig)
            res[b] = {"call_ms": 1000 * float(np.median(calls)), "e2e_ms": 1000 * out.timing["total_s"],
                      "prior_ms": 1000 * out.timing["prior_s"]}
            samples[f"x{b}"], samples[f"tok{b}"] = out.x, out.tokens
    np.savez(a.samples, **samples)
    Path(a.json).write_text(json.dumps(res))


# ---------------------------------------------------------------------------------------------


def model_facts(checkpoint: Path) -> dict:
    from discodiff.benchmarks.latency_probes import denoiser_flops
    from discodiff.checkpoint import load_model

    model, _ = load_model(checkpoint)
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    return {"params": {"denoiser": count(model.denoiser), "encoder": count(model.encoder), "prior": count(model.prior)},
            "gflop_per_call": denoiser_flops(model) / 1e9, "data_shape": list(model.cfg.data_shape)}


def perturb_zero_init(ckpt: Path, gain: float = 0.2, bias_std: float = 0.01) -> int:
    """Give the layers EDM initialises to zero (each residual branch's last conv / projection, the output
    conv, norm biases) small random weights. With them at zero the untrained denoiser is D(x) = c_skip x
    exactly, in every backend, and a parity check against PyTorch could not fail. Returns how many
    tensors were changed; the checkpoint is rewritten atomically with its metadata."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(ckpt), "numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    rng = np.random.default_rng(0)
    changed = 0
    for k, v in tensors.items():
        if v.dtype.kind == "f" and v.size > 1 and not v.any():
            # weights [out, in, ...]: std ~ gain / sqrt(fan_in), so each residual branch adds a few percent
            # of its input and the activations stay O(1) through dozens of blocks, as in a trained model
            scale = gain / np.sqrt(np.prod(v.shape[1:])) if v.ndim >= 2 else bias_std
            tensors[k] = (scale * rng.standard_normal(v.shape)).astype(v.dtype)
            changed += 1
    tmp = ckpt.with_name(f".{ckpt.name}.perturb")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, ckpt)
    return changed


def run_size(name: str, a, rate_gflops: float) -> dict:
    run = a.work / name
    ckpt, bundle = run / "model.safetensors", run / "bundle"
    if not ckpt.exists():
        # initial weights at every size: cost does not depend on training, and these sizes cannot train here
        child([str(BIN / "discodiff-train"), "--preset", name, "--init-only", "--out", str(run), "--quiet"])
        if a.perturb_zero_init:
            perturb_zero_init(ckpt)
    facts = model_facts(ckpt)
    print(f"{name}: {facts['params']['denoiser'] / 1e6:.1f} M denoiser parameters, {facts['gflop_per_call']:.2f} GFLOP "
          f"per call; exporting ...", flush=True)
    # an earlier bundle there is replaced by discodiff-export itself, which refuses a folder it did not write
    exp = child([str(BIN / "discodiff-export"), "--checkpoint", str(ckpt), "--out", str(bundle), "--max-batch", "4",
                 "--opt-batch", "1"])
    man = json.loads((bundle / "manifest.json").read_text())
    sizes = {p.name: p.stat().st_size for p in bundle.iterdir()}
    weight_bytes = 4 * sum(facts["params"].values())
    out = {"size": name, **facts, "bundle_bytes": sum(sizes.values()), "bundle_files": sizes,
           "export": {"wall_s": exp["wall_s"], "peak_rss_mib": exp["peak_rss_mib"], "manifest": man.get("export"),
                      "rss_over_fp32_weights": exp["peak_rss_mib"] * 2**20 / weight_bytes},
           "external_data": {g: e.get("external_data") for g, e in man["graphs"].items() if e.get("external_data")},
           "parity_at_export": {"denoiser_max_abs": man["parity"]["denoiser"]["max_abs"],
                                "sampler": man["parity"]["sampler"]}}
    for backend in ("torch", "ort"):
        print(f"{name}: timing {backend} ...", flush=True)
        j, s = a.work / f"{name}-{backend}.json", a.work / f"{name}-{backend}.npz"
        child(script("scaling.py", "--worker", "--backend", backend, "--checkpoint", ckpt, "--bundle", bundle,
                     "--json", j, "--samples", s, "--repeats", a.repeats))
        out[backend] = {int(k): v for k, v in json.loads(j.read_text()).items()}
        out[f"{backend}_samples"] = dict(np.load(s))
    for b in (1, 4):
        floor_ms = 1000 * facts["gflop_per_call"] * b / rate_gflops
        t, r = out["torch"][b], out["ort"][b]
        out.setdefault("per_batch", {})[b] = {
            "floor_ms": floor_ms, "runtime_x_floor": r["call_ms"] / floor_ms, "speedup_vs_eager": t["call_ms"] / r["call_ms"],
            "prior_share": r["prior_ms"] / r["e2e_ms"],
            "max_abs_vs_torch": float(np.abs(out["ort_samples"][f"x{b}"] - out["torch_samples"][f"x{b}"]).max()),
            "tokens_equal": bool(np.array_equal(out["ort_samples"][f"tok{b}"], out["torch_samples"][f"tok{b}"]))}
    del out["torch_samples"], out["ort_samples"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="shapes,cifar-size,in64-size,xl")
    ap.add_argument("--work", type=Path, default=Path("runs/scale"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--perturb-zero-init", action="store_true",
                    help="give the zero-initialised layers small random weights so that parity is not trivially exact "
                         "(measured: cifar-size's whole-sampler check then reads 1.15e-4 against the export's 1e-4 and "
                         "the export refuses; see the README)")
    add_options(ap, quick="the shapes default only, 2 repeats")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", choices=("torch", "ort"), help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return 0
    sizes = ["shapes"] if a.quick else a.sizes.split(",")
    a.repeats = 2 if a.quick else a.repeats
    a.work.mkdir(parents=True, exist_ok=True)
    from discodiff.benchmarks.latency_probes import matmul_rate

    rate = matmul_rate()
    rows = [run_size(s, a, rate["gflops"]) for s in sizes]
    rep = {"machine": a.machine or machine_name(), "matmul": rate, "sizes": rows}
    rep["targets"] = targets(rep)
    Results(a.out_dir, "scaling", rep["machine"]).publish(rep, report(rep), "quick" if a.quick else "", plot)
    return 0


def targets(rep: dict) -> list[Target]:
    by, out = {r["size"]: r for r in rep["sizes"]}, []
    if "in64-size" in by:
        r = by["in64-size"]
        out.append(Target("in64-size: export with all parity checks <= 10 min", r["export"]["wall_s"] / 60,
                          r["export"]["wall_s"] <= 600))
        out.append(Target("in64-size: export peak RSS <= 4x its fp32 weight size", r["export"]["rss_over_fp32_weights"],
                          r["export"]["rss_over_fp32_weights"] <= 4))
        pb = r["per_batch"][1]
        out.append(Target("in64-size, batch 1: runtime >= 1.2x PyTorch eager per denoiser call", pb["speedup_vs_eager"],
                          pb["speedup_vs_eager"] >= 1.2))
        out.append(Target("in64-size, batch 1: runtime within 1.5x of the compute floor", pb["runtime_x_floor"],
                          pb["runtime_x_floor"] <= 1.5))
    if "xl" in by:
        r = by["xl"]
        worst = max(pb["max_abs_vs_torch"] for pb in r["per_batch"].values())
        out.append(Target("xl: exported with external data, sampled by the runtime with fp32 parity <= 1e-4 vs PyTorch",
                          worst, bool(r["external_data"]) and worst <= 1e-4
                          and all(pb["tokens_equal"] for pb in r["per_batch"].values())))
    return out


def report(rep: dict) -> str:
    lines = [f"scaling on {rep['machine']} (best float32 matmul {rep['matmul']['gflops']:.0f} GFLOP/s)",
             f"{'size':<11} {'denoiser M':>10} {'GFLOP/call':>10} {'bundle MB':>9} {'export s':>8} {'RSS GiB':>7} "
             f"{'B':>2} {'eager ms':>9} {'runtime ms':>10} {'x eager':>7} {'x floor':>7} {'e2e ms':>8} {'prior %':>7} {'max abs':>8}"]
    for r in rep["sizes"]:
        for b in (1, 4):
            pb = r["per_batch"][b]
            lines.append(f"{r['size']:<11} {r['params']['denoiser'] / 1e6:10.1f} {r['gflop_per_call']:10.2f} "
                         f"{r['bundle_bytes'] / 1e6:9.0f} {r['export']['wall_s']:8.0f} {r['export']['peak_rss_mib'] / 1024:7.2f} "
                         f"{b:>2} {r['torch'][b]['call_ms']:9.1f} {r['ort'][b]['call_ms']:10.1f} {pb['speedup_vs_eager']:7.2f} "
                         f"{pb['runtime_x_floor']:7.2f} {r['ort'][b]['e2e_ms']:8.0f} {100 * pb['prior_share']:7.2f} "
                         f"{pb['max_abs_vs_torch']:8.1e}")
    for r in rep["sizes"]:
        if r["external_data"]:
            lines.append(f"{r['size']}: ONNX external data for " + ", ".join(r["external_data"]))
    lines.append("")
    lines += [t.line() for t in rep["targets"]]
    return "\n".join(lines)


def plot(rep: dict, path: Path) -> None:
    plt = pyplot()
    rows = rep["sizes"]
    p = [r["params"]["denoiser"] / 1e6 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for key, label, ls in (("torch", "PyTorch eager", "o-"), ("ort", "runtime (ONNX Runtime fp32)", "s-")):
        axes[0].plot(p, [r[key][1]["call_ms"] for r in rows], ls, label=label)
    axes[0].plot(p, [r["per_batch"][1]["floor_ms"] for r in rows], "k--", label="compute floor")
    axes[0].set_ylabel("one denoiser call, batch 1, ms")
    axes[1].plot(p, [r["export"]["wall_s"] for r in rows], "o-", label="export time, s")
    axes[1].plot(p, [r["export"]["peak_rss_mib"] / 1024 for r in rows], "s-", label="export peak RSS, GiB")
    axes[1].plot(p, [r["bundle_bytes"] / 2**30 for r in rows], "^-", label="bundle size, GiB")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("denoiser parameters, millions")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path, f"cost against model size on {rep['machine']}")


if __name__ == "__main__":
    sys.exit(main())
