"""Opening a bundle: manifest checks, then the backend and the sampling pipeline over it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .manifest import REEXPORT, load_manifest
from .pipeline import ModelMeta, Pipeline

BACKENDS = ("auto", "ort", "trt")
PRECISIONS = ("auto", "fp32", "fp16")


@dataclass
class Opened:
    manifest: dict
    backend: object
    pipeline: Pipeline
    denoiser: str                  # which denoiser graph runs: "denoiser" or "denoiser_fp16"


def choose_backend(manifest: dict, backend: str) -> str:
    if backend != "auto":
        return backend
    if not manifest.get("engines"):
        return "ort"
    from .backends.trt import available

    return "trt" if available()[0] else "ort"


def open_bundle(bundle: Path, backend: str = "auto", precision: str = "auto", device: str = "cpu",
                threads: int | None = None, prior: str = "cache", graphs: tuple[str, ...] | None = None) -> Opened:
    """Check the bundle and load what sampling needs: the chosen denoiser and the prior graph
    (`prior` = "cache" for the KV-cache step graph, "recompute" for the baseline); `graphs` overrides."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    man = load_manifest(Path(bundle))
    kind = choose_backend(man, backend)
    if precision == "auto":  # fp16 where it pays (TensorRT); ONNX Runtime on CPU runs float32
        precision = "fp16" if kind == "trt" else "fp32"
    denoiser = "denoiser_fp16" if precision == "fp16" else "denoiser"
    if denoiser not in man["graphs"]:
        raise UserError(f"the bundle has no {denoiser} graph; {REEXPORT}")
    if graphs is None:
        graphs = (denoiser,) + ((("prior_step" if prior == "cache" else "prior_recompute"),) if man["m"] else ())
    graphs = {name: man["graphs"][name] for name in graphs}
    if kind == "trt":
        if not man.get("engines"):
            raise UserError(f"{bundle} has no TensorRT engines; build them with discodiff-export --trt, "
                            "or use --backend ort")
        from .backends.trt import TrtBackend

        missing = [g for g in graphs if g not in man["engines"]]
        if missing:
            raise UserError(f"{bundle} has no engine for {', '.join(missing)}; rebuild with discodiff-export --trt")
        paths = {g: Path(bundle) / man["engines"][g]["file"] for g in graphs}
        be = TrtBackend(graphs, paths, man.get("tensorrt") or {})
    else:
        from .backends.ort import OrtBackend

        paths = {g: Path(bundle) / man["graphs"][g]["file"] for g in graphs}
        be = OrtBackend(graphs, paths, device=device, threads=threads)
    return Opened(man, be, Pipeline(be, ModelMeta.from_manifest(man), denoiser=denoiser), denoiser)
