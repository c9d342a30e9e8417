"""Latency and fidelity of the runtime against the PyTorch reference, per stage.

    python benchmarks/latency.py                    # runs/shapes checkpoint + bundle, batch 1 and 32
    python benchmarks/latency.py --demo             # the README demo's short run (~20 s on 2 cores)
    python benchmarks/latency.py --quick            # smoke run (batch 1 and 4, 2 repeats)

Every row runs in its own process on the same checkpoint/bundle, the same seeds (0..B-1), the same
draws, tokens picked by the same code and the same Heun schedule (18 levels = 35 evaluations); only the
network backend differs. Stages: prior (KV cache and recompute), one denoiser call, the ODE loop, end
to end; median and spread of --repeats runs after warm-up. Fidelity: final samples against PyTorch
eager float32. Compute floor: denoiser FLOPs x NFE x batch / the float32 matmul rate measured here.
Shared cores (latency_shared.py): the runtime alone and next to a training-step loop under three thread
policies, both sides' slowdown. Writes benchmarks/results/latency[-quick|-demo]-<machine>.{json,txt,png}
and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from discodiff.benchmarks import latency_shared
from discodiff.benchmarks.common import Results, Target, add_options, child, machine_name, pyplot, save_figure, script

CPU_ROWS = ("torch-eager", "torch-compile", "ort-fp32", "ort-fp16")
GPU_ROWS = ("torch-cuda-fp32", "torch-cuda-fp16", "torch-cuda-graphs")
FP32_ROWS = ("torch-eager", "torch-compile", "ort-fp32", "torch-cuda-fp32", "torch-cuda-graphs")
NFE = lambda steps: 2 * steps - 1  # noqa: E731 - Heun


def cuda_info() -> dict | None:
    try:
        import torch

        if torch.cuda.is_available():
            return {"gpu": torch.cuda.get_device_name(0), "torch_cuda": torch.version.cuda}
    except ImportError:
        pass
    return None


def stats(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1000
    return {"median_ms": float(np.median(a)), "p25_ms": float(np.percentile(a, 25)),
            "p75_ms": float(np.percentile(a, 75)), "runs": len(a)}


def fidelity(x: np.ndarray, tok: np.ndarray, ref_x: np.ndarray, ref_tok: np.ndarray) -> dict:
    d = x.astype(np.float64) - ref_x.astype(np.float64)
    return {"max_abs": float(np.abs(d).max()), "rel_l2": float(np.linalg.norm(d) / np.linalg.norm(ref_x)),
            "token_agreement": float(np.mean(tok == ref_tok)) if tok.size else 1.0}


def measure(a, rows: list[str], tmp: Path) -> dict:
    probes = {}
    for probe in ("matmul", "flops") + (() if a.demo or a.quick else ("prior32", "ortopts")):
        print(f"probe {probe} ...", flush=True)
        f = tmp / f"{probe}.json"
        child(script("latency_probes.py", probe, "--checkpoint", a.checkpoint, "--bundle", a.bundle, "--json", f))
        probes[probe] = json.loads(f.read_text())
    results = []
    for batch in a.batches:
        runs: dict[str, list[dict]] = {row: [] for row in rows}
        samples: dict[str, list] = {row: [] for row in rows}
        errors: dict[str, str] = {}
        for rnd in range(a.rounds):  # alternate the row order so slow drift of the machine hits all rows alike
            for row in (rows if rnd % 2 == 0 else rows[::-1]):
                if row in errors:
                    continue
                print(f"round {rnd + 1}/{a.rounds}: {row}, batch {batch} ...", flush=True)
                j, s = tmp / f"{row}-{batch}-{rnd}.json", tmp / f"{row}-{batch}-{rnd}.npz"
                try:
                    child(script("latency_worker.py", "--row", row, "--checkpoint", a.checkpoint, "--bundle", a.bundle,
                                 "--batch", batch, "--steps", a.steps, "--repeats", a.repeats, "--json", j, "--samples", s))
                except RuntimeError as e:
                    print(f"  skipped: {e}", flush=True)
                    errors[row] = str(e).splitlines()[-1]
                    continue
                runs[row].append(json.loads(j.read_text()))
                samples[row].append(dict(np.load(s)))
        ref = samples["torch-eager"][0] if samples.get("torch-eager") else None
        for row in rows:
            if row in errors:
                results.append({"row": row, "batch": batch, "error": errors[row]})
                continue
            res = runs[row][0]
            res["stages"] = {k: stats([t for r in runs[row] for t in r["stages"][k]]) for k in res["stages"]}
            res["first_call_s"] = [r["first_call_s"] for r in runs[row]]
            res["rounds_identical"] = all(np.array_equal(o["x"], samples[row][0]["x"]) for o in samples[row])
            out = samples[row][0]
            res["fidelity"] = fidelity(out["x"], out["tokens"], ref["x"], ref["tokens"]) if ref is not None else None
            results.append(res)
    return {"probes": probes, "results": results}


def derive(report: dict, steps: int) -> None:
    """Ratios, compute-floor multiples and prior shares, in place."""
    flops = report["probes"]["flops"]["flops_per_sample"]
    rate = report["probes"]["matmul"]["gflops"] * 1e9
    by = {(r["row"], r["batch"]): r for r in report["results"] if "error" not in r}
    for r in by.values():
        e2e = r["stages"]["end_to_end"]["median_ms"]
        r["floor_ms"] = 1000 * flops * NFE(steps) * r["batch"] / rate
        r["x_floor"] = e2e / r["floor_ms"]
        r["prior_share"] = r["stages"]["prior_cache"]["median_ms"] / e2e
        for base in ("torch-eager", "torch-compile", "torch-cuda-fp32"):
            if (base, r["batch"]) in by:
                r[f"speedup_vs_{base}"] = by[(base, r["batch"])]["stages"]["end_to_end"]["median_ms"] / e2e


def targets(report: dict) -> list[Target]:
    by = {(r["row"], r["batch"]): r for r in report["results"] if "error" not in r}
    out = []

    def add(name, value, ok):
        out.append(Target(name, value, ok))

    for b in report["batches"]:
        r = by.get(("ort-fp32", b))
        if not r:
            continue
        fid = r["fidelity"]["max_abs"]
        add(f"batch {b}: ort-fp32 fidelity max abs <= 1e-4", fid, fid <= 1e-4)
        if b == 1 and "speedup_vs_torch-eager" in r:
            add("batch 1: ort-fp32 >= 2x torch eager", r["speedup_vs_torch-eager"], r["speedup_vs_torch-eager"] >= 2)
        if b >= 32:
            if "speedup_vs_torch-eager" in r:
                add(f"batch {b}: ort-fp32 >= 1.3x torch eager", r["speedup_vs_torch-eager"], r["speedup_vs_torch-eager"] >= 1.3)
            if "speedup_vs_torch-compile" in r:
                add(f"batch {b}: ort-fp32 >= 1.1x torch.compile", r["speedup_vs_torch-compile"],
                    r["speedup_vs_torch-compile"] >= 1.1)
            add(f"batch {b}: ort-fp32 within 2.5x of the compute floor", r["x_floor"], r["x_floor"] <= 2.5)
        add(f"batch {b}: prior <= 1% of end to end (ort-fp32)", r["prior_share"], r["prior_share"] <= 0.01)
    p = report["probes"].get("prior32")
    for b in (1, 32) if p else ():
        s = p[f"batch{b}"]["speedup"]
        add(f"KV cache >= 2x recompute at 32 tokens, batch {b}", s, s >= 2)
    if report.get("shared"):
        out += latency_shared.targets(report["shared"])
    return out


def table(report: dict) -> str:
    head = (f"{'row':<18} {'B':>3} {'end-to-end ms':>20} {'vs eager':>8} {'vs comp.':>8} {'x floor':>7} "
            f"{'prior %':>7} {'1 call ms':>9} {'ODE ms':>8} {'max abs':>8} {'rel L2':>8} {'tokens':>6}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"{r['row']:<18} {r['batch']:>3}  skipped: {r['error'][:80]}")
            continue
        s, f = r["stages"], r["fidelity"] or {}
        e = s["end_to_end"]
        spread = f"{e['median_ms']:.1f} [{e['p25_ms']:.1f}-{e['p75_ms']:.1f}]"
        fmt = lambda v, p: f"{v:{p}}" if v is not None else "-"  # noqa: E731
        lines.append(f"{r['row']:<18} {r['batch']:>3} {spread:>20} {fmt(r.get('speedup_vs_torch-eager'), '8.2f')} "
                     f"{fmt(r.get('speedup_vs_torch-compile'), '8.2f')} {r['x_floor']:7.2f} {100 * r['prior_share']:7.2f} "
                     f"{s['denoiser_call']['median_ms']:9.2f} {s['ode']['median_ms']:8.1f} "
                     f"{fmt(f.get('max_abs'), '8.1e')} {fmt(f.get('rel_l2'), '8.1e')} {fmt(f.get('token_agreement'), '6.2f')}")
    p = report["probes"]
    lines.append("")
    lines.append(f"compute floor: {p['flops']['flops_per_sample'] / 1e6:.1f} MFLOP per denoiser call per sample, "
                 f"best float32 matmul rate {p['matmul']['gflops']:.1f} GFLOP/s ({p['matmul']['best']}; "
                 + ", ".join(f"{k} {v:.0f}" for k, v in p["matmul"]["by_library"].items()) + ")")
    for b in (1, 32) if "prior32" in p else ():
        q = p["prior32"][f"batch{b}"]
        lines.append(f"prior at 32 tokens, batch {b}: KV cache {1000 * q['cache']['median_s']:.2f} ms, recompute "
                     f"{1000 * q['recompute']['median_s']:.2f} ms ({q['speedup']:.2f}x), tokens equal: {q['tokens_equal']}")
    if "ortopts" in p:
        lines.append("ONNX Runtime session options, one denoiser call (ms): " + "; ".join(
            f"batch {b[5:]}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()) for b, row in p["ortopts"].items()))
    if report.get("shared"):
        lines += ["", latency_shared.table(report["shared"])]
    lines.append("")
    lines += [t.line() for t in report["targets"]]
    return "\n".join(lines)


def chart(report: dict, path: Path) -> None:
    plt = pyplot()
    batches = report["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.8), dpi=100)
    axes = np.atleast_1d(axes)
    for ax, b in zip(axes, batches):
        rs = [r for r in report["results"] if r["batch"] == b and "error" not in r]
        names = [r["row"] for r in rs]
        vals = [r["stages"]["end_to_end"]["median_ms"] for r in rs]
        ax.barh(names, vals, color=["tab:grey" if n.startswith("torch") else "tab:blue" for n in names])
        if rs:
            ax.axvline(rs[0]["floor_ms"], color="tab:red", ls="--", lw=1, label="compute floor")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
        ax.set_xlabel("end to end, ms (median)")
        ax.set_title(f"batch {b}, Heun {report['steps']} steps ({NFE(report['steps'])} NFE)", fontsize=10)
        ax.invert_yaxis()
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path, f"DisCo-Diff sampling latency on {report['machine']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/shapes/model.safetensors"))
    ap.add_argument("--bundle", type=Path, default=None, help="default: 'bundle' beside the checkpoint")
    ap.add_argument("--batches", type=str, default="1,32")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per stage per round")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all rows, in alternating order")
    ap.add_argument("--rows", type=str, default=None, help="comma-separated rows (default: all that can run here)")
    add_options(ap, quick="smoke run: batches 1,4 and 2 repeats", machine="CPU model + cores [+ GPU]")
    ap.add_argument("--demo", action="store_true", help="the README demo's short run: PyTorch eager vs ONNX Runtime "
                    "fp32 at batch 1 and 32, one round of 3, no session-option, prior or shared-core probes")
    ap.add_argument("--no-shared", dest="shared", action="store_false", help="skip the shared-core rows")
    a = ap.parse_args()
    a.bundle = a.bundle or a.checkpoint.parent / "bundle"
    a.demo = a.demo and not a.quick
    if a.quick:
        a.batches, a.repeats, a.rounds = "1,4", 2, 1
    if a.demo:
        a.repeats, a.rounds, a.rows = 3, 1, a.rows or "torch-eager,ort-fp32"
    a.shared = a.shared and not (a.quick or a.demo)
    try:
        a.batches = [int(b) for b in a.batches.split(",")]
        if min(a.batches) < 1 or a.steps < 1 or a.repeats < 1 or a.rounds < 1:
            raise ValueError
    except ValueError:
        print("latency.py: error: --batches must be positive integers like 1,32; --steps, --repeats, --rounds >= 1",
              file=sys.stderr)
        return 2
    for p, what in ((a.checkpoint, "checkpoint"), (a.bundle / "manifest.json", "bundle")):
        if not p.exists():
            print(f"latency.py: error: {what} {p} not found; run discodiff-train and discodiff-export first "
                  "(the README's demo command)", file=sys.stderr)
            return 2
    gpu = cuda_info()
    rows = a.rows.split(",") if a.rows else list(CPU_ROWS) + (list(GPU_ROWS) if gpu else [])
    if not a.rows:
        from discodiff.runtime.backends.trt import available

        if available()[0] and json.loads((a.bundle / "manifest.json").read_text()).get("engines"):
            rows.append("trt-fp16")
    machine = a.machine or machine_name(gpu["gpu"] if gpu else None)
    with tempfile.TemporaryDirectory() as tmp:
        report = measure(a, rows, Path(tmp))
        if a.shared:
            report["shared"] = latency_shared.measure(a, Path(tmp), log=lambda m: print(m, flush=True))
    import onnxruntime
    import torch

    report.update(machine=machine, batches=a.batches, steps=a.steps, repeats=a.repeats,
                  platform={"cpu": machine_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "gpu": gpu},
                  checkpoint=str(a.checkpoint))
    derive(report, a.steps)
    report["targets"] = targets(report)
    variant = "quick" if a.quick else "demo" if a.demo else ""
    path = Results(a.out_dir, "latency", machine).publish(report, table(report), variant, chart, indent=2)
    print(f"\nwrote {path}, .txt and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
