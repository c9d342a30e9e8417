"""Probes of the latency benchmark, each run in its own process by benchmarks/latency.py:

    matmul   the machine's float32 matmul rate (GFLOP/s) with the same threads: the compute floor's divisor
    flops    the denoiser's FLOPs per sample (matmuls and convolutions, counted by torch)
    prior32  KV-cache vs recompute prior graphs at 32 tokens on ONNX Runtime (a prior of the bundle's
             width and depth with max_len 32, random weights: this measures speed, not quality)
    ortopts  one denoiser call under ONNX Runtime session-option variants (why the runtime's are chosen)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from discodiff.benchmarks.common import timed


def matmul_rate(n: int = 1024, repeats: int = 20) -> dict:
    """Float32 matmul GFLOP/s with each library at hand (torch, numpy, ONNX Runtime), default threads.
    The compute floor divides by the fastest: the machine's best matmul rate, not one library's."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    a, b = np.random.default_rng(0).standard_normal((2, n, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                  ir_version=onnx.IR_VERSION_2023_5_5).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns = {"torch": lambda: ta @ tb, "numpy": lambda: a @ b, "onnxruntime": lambda: sess.run(None, {"a": a, "b": b})}
    rates = {}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        rates[name] = 2 * n**3 / float(np.median(ts)) / 1e9
    best = max(rates, key=rates.get)
    return {"n": n, "gflops": rates[best], "best": best, "by_library": rates, "threads": torch.get_num_threads()}


def denoiser_flops(model) -> int:
    """FLOPs of one denoiser call on one sample (matmuls and convolutions, counted by torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    kw = {"tokens": torch.zeros(1, cfg.m, dtype=torch.int32) if cfg.m else None,
          "class_labels": torch.zeros(1, dtype=torch.int32) if cfg.num_classes else None}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.denoiser(torch.randn(1, *cfg.data_shape), torch.ones(1), **kw)
    return int(fc.get_total_flops())


def flops(checkpoint: Path) -> dict:
    from discodiff.checkpoint import load_model

    model, _ = load_model(checkpoint)
    return {"flops_per_sample": denoiser_flops(model), "params": sum(p.numel() for p in model.denoiser.parameters())}


def prior32(checkpoint: Path, tokens: int = 32, repeats: int = 7) -> dict:
    import torch

    from discodiff.checkpoint import read_info
    from discodiff.config import ModelConfig, from_dict, replace
    from discodiff.export.graphs import graph_specs
    from discodiff.export.onnx_export import export_graph
    from discodiff.networks import DisCoDiff
    from discodiff.runtime import Pipeline
    from discodiff.runtime.backends.ort import OrtBackend
    from discodiff.runtime.draws import Draws
    from discodiff.runtime.sampling import prior_tokens
    from discodiff.sampling import model_meta

    cfg = replace(from_dict(ModelConfig, read_info(checkpoint)["model"]), m=tokens)
    torch.manual_seed(0)
    specs = graph_specs(DisCoDiff(cfg).eval(), max_batch=32)
    rng = np.random.default_rng(0)
    out: dict = {"tokens": tokens, "prior": {"width": cfg.prior.width, "depth": cfg.prior.depth,
                                             "heads": cfg.prior.heads}}
    with tempfile.TemporaryDirectory() as tmp:
        graphs, paths = {}, {}
        for name in ("prior_step", "prior_recompute", "denoiser"):    # the model adapter needs a denoiser too
            spec, wrapper = specs[name]
            paths[name] = Path(tmp) / f"{name}.onnx"
            # the denoiser's example from a generator of its own: `rng` goes on to draw the uniforms below
            example_rng = np.random.default_rng(1) if name == "denoiser" else rng
            export_graph(wrapper, spec, paths[name], spec.sample_feeds(example_rng, 2))
            graphs[name] = spec
        with OrtBackend(graphs, paths) as backend:
            pipe = Pipeline.from_backend(backend, model_meta(cfg))
            for batch in (1, 32):
                d = Draws(np.arange(batch), np.zeros(batch, np.int32), rng.random((batch, tokens)),
                          np.zeros((batch, *cfg.data_shape), np.float32))
                row = {}
                for mode in ("cache", "recompute"):
                    ts, toks = timed(lambda: prior_tokens(pipe.model, d, recompute=mode == "recompute"), repeats)
                    row[mode] = {"median_s": float(np.median(ts)), "tokens": toks}
                row["tokens_equal"] = bool(np.array_equal(row["cache"].pop("tokens"), row["recompute"].pop("tokens")))
                row["speedup"] = row["recompute"]["median_s"] / row["cache"]["median_s"]
                out[f"batch{batch}"] = row
    return out


def ort_options(bundle: Path, repeats: int = 30) -> dict:
    """One denoiser call under ONNX Runtime session-option variants, at batch 1 and 32: the
    measurement behind the runtime's choice (ENABLE_ALL with NCHWc, all cores, spinning)."""
    import onnxruntime as ort

    from discodiff.runtime.backends.ort import session_options
    from discodiff.runtime.manifest import load_manifest

    man = load_manifest(bundle)
    spec = man.graph("denoiser")
    path = str(bundle / spec.file)

    def variant(name, batch):
        so = session_options()
        if name == "1 thread":
            so.intra_op_num_threads = 1
        elif name == "no spinning":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif name == "extended (no NCHWc layout)":
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        elif name == "batch dimension fixed":
            so.add_free_dimension_override_by_name("B", batch)
        return so

    out = {}
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        feeds = spec.sample_feeds(rng, batch, man.meta.sigma_data, sigmas=np.ones(batch))
        row = {}
        for name in ("runtime default", "1 thread", "no spinning", "extended (no NCHWc layout)", "batch dimension fixed"):
            sess = ort.InferenceSession(path, variant(name, batch), providers=["CPUExecutionProvider"])
            for _ in range(5):
                sess.run(None, feeds)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                ts.append(time.perf_counter() - t0)
            row[name] = float(np.median(ts)) * 1000
        out[f"batch{batch}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", choices=("matmul", "flops", "prior32", "ortopts"))
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    res = {"matmul": lambda: matmul_rate(), "flops": lambda: flops(a.checkpoint),
           "prior32": lambda: prior32(a.checkpoint), "ortopts": lambda: ort_options(a.bundle)}[a.probe]()
    a.json.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
