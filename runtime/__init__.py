"""Torch-free runtime: loads a bundle written by `discodiff-export` and samples from it.

Imports numpy, onnxruntime and opencv (TensorRT and polygraphy lazily, in the TensorRT backend), and of
this project only itself and the torch-free helpers (`discodiff.errors`, `atomic`, `cli_util`); the
bundle is its only input. tests/runtime/test_layers.py enforces this. Modules, bottom up:

    contract      EDM constants, null code/label, guidance batch rule, TensorSpec/GraphSpec/ModelMeta
    schedule      noise levels: EDM rho, uniform in log sigma
    solvers       Heun, Euler, DPM-Solver++(2M/3M), iPNDM, UniPC over `denoise(x, t)`
    fit_schedule  time steps fitted to a model against a Heun teacher
    draws         per-sample randomness from (seed, stream)
    tokens        inverse-CDF token picking, autoregressive over a prior step
    sampling      the one sampling core: guidance, prior tokens, sample_batch, iter_batches
    manifest      the bundle's manifest: schema checks, hashes, graph contracts
    backends/     ort (ONNX Runtime), trt (TensorRT + CUDA graphs), behind one Backend interface
    model         the model protocol over a backend's graphs (BundleModel)
    bundle        open_bundle: manifest + backend + model, as a context manager
    output, images, cli   discodiff-run: streamed outputs, PNGs and grids, the command
"""
