"""One row of the latency benchmark, in its own process (ONNX Runtime's spinning threads would
disturb PyTorch in a shared one). Run by benchmarks/latency.py; writes a JSON of stage timings and an
.npz of the final samples.

    python benchmarks/latency_worker.py --row ort-fp32 --batch 32 --json out.json --samples out.npz ...

Every row samples the same seeds 0..batch-1 with the same draws, tokens picked by the same code, the
same solver code and schedule; only the network backend differs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROWS = ("torch-eager", "torch-compile", "ort-fp32", "ort-fp16", "trt-fp16",
        "torch-cuda-fp32", "torch-cuda-fp16", "torch-cuda-graphs")


def timed(fn, repeats: int, warmup: int, sync=lambda: None) -> tuple[list[float], object]:
    for _ in range(warmup):
        out = fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return ts, out


# ---------------------------------------------------------------------------------------------
# Backends as (prior step factory, denoise factory) over numpy draws


def torch_row(row: str, checkpoint: Path, batch: int):
    import torch

    from discodiff.checkpoint import load_model
    from discodiff.networks import to_mixed_fp16
    from discodiff.sampling import denoise_fn, prior_step_fn

    cuda = row.startswith("torch-cuda")
    dev = torch.device("cuda" if cuda else "cpu")
    model, _ = load_model(checkpoint, device=dev)
    den = model.denoiser
    if row == "torch-cuda-fp16":
        den = to_mixed_fp16(den)
    if row == "torch-compile":
        den = torch.compile(den)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = model.cfg

    def prior(use_cache: bool):
        return prior_step_fn(model.prior, batch, dev, use_cache)

    def denoiser(tokens: np.ndarray, labels: np.ndarray):
        tok = torch.from_numpy(tokens).to(dev) if cfg.m else None
        lab = torch.from_numpy(labels).to(dev) if cfg.num_classes else None
        if row == "torch-cuda-graphs":
            return cuda_graph_denoise(den, tok, lab, batch, cfg.data_shape, dev)
        return denoise_fn(den, tok, lab, 1.0, cfg.k)

    def to_x(noise: np.ndarray):
        return torch.from_numpy(noise).to(dev)

    def to_numpy(x):
        return x.float().cpu().numpy()

    return model.cfg, prior, denoiser, to_x, to_numpy, sync, torch.no_grad


def cuda_graph_denoise(den, tok, lab, batch: int, shape, dev):
    """D(x, t) replaying one CUDA graph of the denoiser captured on static x and sigma buffers."""
    import torch

    static_x = torch.zeros(batch, *shape, device=dev)
    static_s = torch.zeros(batch, device=dev)
    state: dict = {}

    def capture():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                den(static_x, static_s, tokens=tok, class_labels=lab)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            state["out"] = den(static_x, static_s, tokens=tok, class_labels=lab)
        state["graph"] = g

    def D(x, t: float):
        static_x.copy_(x)
        static_s.fill_(t)
        if "graph" not in state:
            capture()
        state["graph"].replay()
        return state["out"].clone()

    return D


def runtime_row(row: str, bundle: Path, batch: int, threads: int | None):
    from contextlib import nullcontext

    from discodiff.runtime.bundle import open_bundle

    backend = "trt" if row.startswith("trt") else "ort"
    precision = "fp16" if row.endswith("fp16") else "fp32"
    opened = open_bundle(bundle, backend, precision, threads=threads,
                         graphs=(("denoiser_fp16" if precision == "fp16" else "denoiser"), "prior_step", "prior_recompute"))
    pipe, man = opened.pipeline, opened.manifest

    class Cfg:
        m, k, num_classes, data_shape = man["m"], man["k"], man["num_classes"], tuple(man["data_shape"])

    def prior(use_cache: bool):
        return pipe.prior_step_fn(batch, use_cache)

    def denoiser(tokens, labels):
        return pipe.denoise_fn(tokens, labels)

    return Cfg, prior, denoiser, (lambda a: a), (lambda a: a), (lambda: None), nullcontext


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
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--samples", type=Path, required=True)
    a = ap.parse_args()

    from discodiff.runtime.draws import draw
    from discodiff.runtime.schedule import sigma_steps
    from discodiff.runtime.solvers import solve
    from discodiff.runtime.tokens import sample_tokens

    t_load = time.perf_counter()
    if a.row.startswith("torch"):
        cfg, prior, denoiser, to_x, to_numpy, sync, ctx = torch_row(a.row, a.checkpoint, a.batch)
    else:
        cfg, prior, denoiser, to_x, to_numpy, sync, ctx = runtime_row(a.row, a.bundle, a.batch, a.threads)
    t_load = time.perf_counter() - t_load
    sigmas = sigma_steps(a.steps)
    seeds = np.arange(a.batch)

    def tokens_of(d, use_cache: bool):
        if not cfg.m:
            return np.zeros((len(d.seeds), 0), np.int32)
        return sample_tokens(prior(use_cache), d.labels, d.u)

    def end_to_end():
        d = draw(seeds, cfg.data_shape, cfg.m, cfg.num_classes)
        tok = tokens_of(d, True)
        x = solve("heun", denoiser(tok, d.labels), to_x(d.noise) * float(sigmas[0]), sigmas)
        return to_numpy(x), tok

    res: dict = {"row": a.row, "batch": a.batch, "steps": a.steps, "load_s": t_load}
    with ctx():
        d = draw(seeds, cfg.data_shape, cfg.m, cfg.num_classes)
        t_first = time.perf_counter()
        end_to_end()  # first call: includes compilation (torch.compile) or lazy init
        sync()
        res["first_call_s"] = time.perf_counter() - t_first
        stages = {}
        stages["prior_cache"], tok = timed(lambda: tokens_of(d, True), a.repeats, a.warmup, sync)
        stages["prior_recompute"], tok_r = timed(lambda: tokens_of(d, False), a.repeats, a.warmup, sync)
        D = denoiser(tok, d.labels)
        x0 = to_x(d.noise) * float(sigmas[0])
        stages["denoiser_call"], _ = timed(lambda: D(x0, float(sigmas[5])), max(a.repeats, 10), 2, sync)
        stages["ode"], _ = timed(lambda: solve("heun", D, x0, sigmas), a.repeats, a.warmup, sync)
        stages["end_to_end"], (x, tok_e) = timed(end_to_end, a.repeats, a.warmup, sync)
    res["stages"] = stages
    res["tokens_cache_equal_recompute"] = bool(np.array_equal(tok, tok_r))
    a.samples.parent.mkdir(parents=True, exist_ok=True)
    np.savez(a.samples, x=x, tokens=tok_e)
    a.json.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
