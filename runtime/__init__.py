"""Torch-free runtime: loads a bundle written by `discodiff-export` and samples from it.

    from discodiff.runtime import Pipeline

    with Pipeline.open("runs/shapes/bundle") as pipe:
        out = pipe(range(16), nfe=8)      # Samples: x, tokens, labels, seeds, images, timing

Imports numpy, onnxruntime and opencv (TensorRT and polygraphy lazily, in the TensorRT backend), and of
this project only itself and the torch-free helpers (`discodiff.errors`, `atomic`, `jsonfile`, `cli_util`,
`config`, `rundir`, `lock`); the bundle is its only input. tests/runtime/test_layers.py enforces this.
Modules, bottom up:

    limits        the bounds of every sampling option (CLI, Python and server alike)
    contract      EDM constants, null code/label, guidance batch rule, TensorSpec/GraphSpec/ModelMeta
    schedule      noise levels: EDM rho, uniform in log sigma
    solvers       Heun, Euler, DPM-Solver++(2M/3M), iPNDM, UniPC over `denoise(x, t)`
    fit/          noise levels fitted to the model against a Heun teacher (schedule, model; cli: discodiff-fit)
    plan          what a request resolves to: solver, levels, calls (nfe = the best measured setting)
    draws         per-sample randomness from (seed, stream)
    tokens        inverse-CDF token picking, autoregressive over a prior step
    sampling      the one sampling core: guidance, prior tokens, sample_batch, nonfinite_rows
    onnx_refs     the external-data files a graph would read, from its protobuf
    manifest      the bundle's manifest: schema checks, files read only from inside the bundle, hashes
    backends/     ort (ONNX Runtime), trt (TensorRT + CUDA graphs), behind one Backend interface
    model         the model protocol over a backend's graphs (BundleModel)
    bundle        load_backend: the backend over the graphs sampling needs (used by the pipeline)
    pipeline      Pipeline, Samples: the object people and every command call
    output, images, cli   discodiff-run: streamed outputs, PNGs and grids, the command
    serving/      discodiff-serve: the Triton handler and server over one Pipeline per instance
"""
from discodiff.runtime.pipeline import NonFiniteSamples, Pipeline, Samples
from discodiff.runtime.plan import Plan, PlanError

__all__ = ["Pipeline", "Samples", "NonFiniteSamples", "Plan", "PlanError"]
