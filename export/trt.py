"""TensorRT engines from the bundle's ONNX graphs, through polygraphy. Imported lazily.

Each engine: a strongly typed network parsed from the ONNX (precision comes from the graph's own
casts: TensorRT 10.12 deprecates and TensorRT 11 removes weakly typed fp16 builds), one optimisation
profile over the graph's batch range, and a timing cache kept in the bundle so rebuilds are fast.
Each engine is checked against ONNX Runtime on random inputs before it is accepted.

Where TensorRT or an NVIDIA GPU is missing, `require()` raises one clear `TrtUnavailable` line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from discodiff.atomic import atomic_write
from discodiff.errors import UserError
from discodiff.runtime.contract import GraphSpec

INSTALL_HINT = ("install TensorRT 10.12+ on a CUDA host (pip install tensorrt), or run without --trt "
                "to use the ONNX bundle with ONNX Runtime")
ENGINE_REL_TOL = {"mixed-fp16": 2e-2, "fp32": 5e-3}   # relative L2 vs ONNX Runtime (TF32 / fp16 kernels)


class TrtUnavailable(UserError):
    pass


def require() -> dict:
    """-> {"tensorrt": version, "gpu": name, "compute_capability": "9.0"}, or TrtUnavailable."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TrtUnavailable(f"TensorRT engines need TensorRT and an NVIDIA GPU, and the tensorrt package is not "
                             f"installed; {INSTALL_HINT}") from None
    from discodiff.runtime.backends.trt import available, gpu_stamp

    ok, why = available()
    if not ok:
        raise TrtUnavailable(f"TensorRT engines need TensorRT and an NVIDIA GPU ({why}); {INSTALL_HINT}")
    return {"tensorrt": trt.__version__, **gpu_stamp()}


def _profile(spec: GraphSpec):
    from polygraphy.backend.trt import Profile

    prof = Profile()
    for t in spec.inputs:
        if t.batched:
            b = spec.batch
            prof.add(t.name, min=t.concrete(b.min), opt=t.concrete(b.opt), max=t.concrete(b.max))
    return prof


def build_engine(onnx_path: Path, spec: GraphSpec, engine_path: Path, timing_cache: Path) -> None:
    """Build a strongly typed engine for `onnx_path` with one profile over the batch range."""
    from polygraphy.backend.trt import CreateConfig, engine_bytes_from_network, network_from_onnx_path

    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    config = CreateConfig(profiles=[_profile(spec)],
                          load_timing_cache=str(timing_cache) if timing_cache.exists() else None)
    data = engine_bytes_from_network(network, config=config, save_timing_cache=str(timing_cache))
    if data is None:
        raise UserError(f"TensorRT could not build an engine for {onnx_path.name}; see the TensorRT log above")
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(bytes(data)))


def check_engine(engine_path: Path, spec: GraphSpec, onnx_path: Path, rng: np.random.Generator,
                 sigma_data: float = 1.0) -> dict:
    """Engine vs ONNX Runtime on the contract's random feeds at the profile's opt batch: relative L2
    per output."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from discodiff.runtime.backends.ort import OrtBackend

    batch = spec.batch.opt
    feeds = spec.sample_feeds(rng, batch, sigma_data)
    with OrtBackend({spec.name: spec}, {spec.name: onnx_path}) as ort_backend:
        ref = ort_backend.run(spec.name, feeds)
    with TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path)))) as runner:
        out = runner.infer(feeds)
    errs = {}
    for name, r in ref.items():
        o = np.asarray(out[name]).astype(np.float64)
        errs[name] = float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12))
    tol = ENGINE_REL_TOL.get(spec.precision, ENGINE_REL_TOL["fp32"])
    worst = max(errs.values())
    if worst > tol:
        raise UserError(f"TensorRT engine {engine_path.name} differs from ONNX Runtime (relative L2 {worst:.2e} > {tol:g}); "
                        "the engine was not added to the bundle")
    return {"rel_l2": errs, "batch": batch, "tol": tol}
