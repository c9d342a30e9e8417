"""One row of the latency benchmark, in its own process (ONNX Runtime's spinning threads would
disturb PyTorch in a shared one). Run by benchmarks/latency.py; writes a JSON of stage timings and an
.npz of the final samples.

    python benchmarks/latency_worker.py --row ort-fp32 --batch 32 --json out.json --samples out.npz ...

Every row is the one Pipeline on the same seeds 0..batch-1, the same draws and the same Heun levels;
rows differ only in the model under it: TorchModel (eager, compiled, CUDA, fp16, CUDA graphs) or a
bundle's graphs on ONNX Runtime / TensorRT (Pipeline.open). The prior and one denoiser call are timed
apart through the sampling core's own pieces (prior_tokens, denoiser_fn), which the Pipeline times only
inside a whole call.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from discodiff.benchmarks.common import sample_draws, timed

ROWS = ("torch-eager", "torch-compile", "ort-fp32", "ort-fp16", "trt-fp16",
        "torch-cuda-fp32", "torch-cuda-fp16", "torch-cuda-graphs")


# ---------------------------------------------------------------------------------------------
# Rows: one model adapter each; everything after that is the same Pipeline


def torch_row(row: str, checkpoint: Path):
    import torch

    from discodiff.checkpoint import load_model
    from discodiff.networks import to_mixed_fp16
    from discodiff.runtime import Pipeline
    from discodiff.sampling import TorchModel

    cuda = row.startswith("torch-cuda")
    dev = torch.device("cuda" if cuda else "cpu")
    model, _ = load_model(checkpoint, device=dev)
    den = model.denoiser
    if row == "torch-cuda-fp16":
        den = to_mixed_fp16(den)
    if row == "torch-compile":
        den = torch.compile(den)
    if row == "torch-cuda-graphs":
        den = CudaGraphDenoiser(den, dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    return Pipeline(TorchModel(model, dev, denoiser=den)), sync, torch.no_grad


class CudaGraphDenoiser:
    """The denoiser's call replayed from one CUDA graph per batch size, captured on static buffers
    (x, sigma, tokens, labels are copied in; the output is copied out)."""

    def __init__(self, den, dev):
        self.den, self.dev, self.graphs = den, dev, {}

    def _capture(self, x, sigma, tokens, class_labels):
        import torch

        static = {"x": x.clone(), "sigma": sigma.clone(),
                  "tokens": None if tokens is None else tokens.clone(),
                  "class_labels": None if class_labels is None else class_labels.clone()}
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.den(static["x"], static["sigma"], tokens=static["tokens"], class_labels=static["class_labels"])
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static["out"] = self.den(static["x"], static["sigma"], tokens=static["tokens"],
                                     class_labels=static["class_labels"])
        return g, static

    def __call__(self, x, sigma, tokens=None, class_labels=None):
        b = x.shape[0]
        if b not in self.graphs:
            self.graphs[b] = self._capture(x, sigma, tokens, class_labels)
        g, st = self.graphs[b]
        for name, v in (("x", x), ("sigma", sigma), ("tokens", tokens), ("class_labels", class_labels)):
            if v is not None:
                st[name].copy_(v)
        g.replay()
        return st["out"].clone()


def runtime_row(row: str, bundle: Path, threads: int | None, spin: str = "on"):
    from contextlib import nullcontext

    from discodiff.runtime import Pipeline

    precision = "fp16" if row.endswith("fp16") else "fp32"
    pipe = Pipeline.open(bundle, backend="trt" if row.startswith("trt") else "ort", precision=precision,
                         threads=threads, spin=spin,
                         graphs=(("denoiser_fp16" if precision == "fp16" else "denoiser"), "prior_step", "prior_recompute"))
    return pipe, (lambda: None), nullcontext


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", choices=ROWS, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--spin", choices=("auto", "on", "off"), default="on",
                    help="ONNX Runtime spinning (on: all cores spinning, the measured-fastest alone)")
    ap.add_argument("--only-e2e", action="store_true", help="time only end to end (the shared-core rows)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--samples", type=Path, required=True)
    a = ap.parse_args()

    from discodiff.runtime.draws import draw
    from discodiff.runtime.sampling import denoiser_fn, prior_tokens
    from discodiff.runtime.schedule import sigma_steps

    t_load = time.perf_counter()
    if a.row.startswith("torch"):
        pipe, sync, ctx = torch_row(a.row, a.checkpoint)
    else:
        pipe, sync, ctx = runtime_row(a.row, a.bundle, a.threads, a.spin)
    t_load = time.perf_counter() - t_load
    model, meta = pipe.model, pipe.meta
    seeds = np.arange(a.batch)
    d = draw(seeds, meta)
    heun = dict(solver="heun", sigmas=sigma_steps(a.steps, meta.sigma_min, meta.sigma_max, meta.rho))
    run = lambda draws, **kw: sample_draws(pipe, draws, **heun, **kw)  # noqa: E731
    res: dict = {"row": a.row, "batch": a.batch, "steps": a.steps, "load_s": t_load,
                 "cpu": pipe.cpu.describe() if pipe.cpu else None}
    if a.only_e2e:
        with ctx():
            run(d)
            res["window"] = [time.time()]
            res["stages"] = {"end_to_end": timed(lambda: run(d), a.repeats, 0, sync)[0]}
            res["window"].append(time.time())
        a.json.write_text(json.dumps(res))
        return
    with ctx():
        t_first = time.perf_counter()
        run(d)                                  # first call: includes compilation (torch.compile) or lazy init
        sync()
        res["first_call_s"] = time.perf_counter() - t_first
        stages = {}
        stages["prior_cache"], tok = timed(lambda: prior_tokens(model, d), a.repeats, a.warmup, sync)
        stages["prior_recompute"], tok_r = timed(lambda: prior_tokens(model, d, recompute=True), a.repeats, a.warmup, sync)
        D = denoiser_fn(model, tok, d.labels)
        x0 = model.asarray(d.noise) * 10.0
        stages["denoiser_call"], _ = timed(lambda: D(x0, 10.0), max(a.repeats, 10), 2, sync)
        stages["ode"], _ = timed(lambda: run(d, tokens=tok), a.repeats, a.warmup, sync)
        stages["end_to_end"], out = timed(lambda: run(draw(seeds, meta)), a.repeats, a.warmup, sync)
        x, tok_e = out.x, out.tokens
    res["stages"] = stages
    res["tokens_cache_equal_recompute"] = bool(np.array_equal(tok, tok_r))
    a.samples.parent.mkdir(parents=True, exist_ok=True)
    np.savez(a.samples, x=x, tokens=tok_e)
    a.json.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
