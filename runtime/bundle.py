"""The backend over the graphs of a checked bundle that sampling needs: which backend ("auto": TensorRT
where the bundle has engines and the machine can run them), which denoiser graph (precision), which prior
graph. `Pipeline.open` is its caller and owns what it returns:

    backend, denoiser = load_backend(manifest, "ort", "fp32")   # ... Pipeline closes the backend
"""
from __future__ import annotations

from discodiff.errors import UserError
from discodiff.runtime.manifest import REEXPORT, Manifest

BACKENDS = ("auto", "ort", "trt")
PRECISIONS = ("auto", "fp32", "fp16")
PRIORS = ("cache", "recompute")
DEVICES = ("cpu", "cuda")


def choose_backend(manifest: Manifest, backend: str) -> str:
    """"ort" or "trt" for the requested `backend`: "auto" is TensorRT where the bundle has engines and
    this machine can run them (TensorRT importable, a GPU visible), else ONNX Runtime."""
    if backend != "auto":
        return backend
    if not manifest.engines:
        return "ort"
    from discodiff.runtime.backends.trt import available

    return "trt" if available()[0] else "ort"


def load_backend(manifest: Manifest, backend: str = "auto", precision: str = "auto", device: str = "cpu",
                 threads: int | None = None, prior: str = "cache", graphs: tuple[str, ...] | None = None,
                 spinning: bool = True):
    """Load what sampling needs from the checked bundle `manifest` on one backend.

    Args:
        manifest: the bundle's `Manifest`, already loaded and verified.
        backend: "auto", "ort" or "trt" (`choose_backend`).
        precision: "fp32", "fp16" or "auto" (fp16 on TensorRT, fp32 on ONNX Runtime): which denoiser graph.
        device: ONNX Runtime's device, "cpu" or "cuda".
        threads, spinning: ONNX Runtime's intra-op threads (None: every core) and whether idle ones spin.
        prior: "cache" (the KV-cache step graph) or "recompute" (the no-cache baseline).
        graphs: load exactly these graphs instead (e.g. add "encoder").
    Returns:
        (backend, denoiser graph name): the caller closes the backend (a context manager).
    Raises `UserError` (one line) for a bad option or graphs the bundle does not have.
    """
    for value, choices, what in ((backend, BACKENDS, "backend"), (precision, PRECISIONS, "precision"),
                                 (prior, PRIORS, "prior"), (device, DEVICES, "device")):
        if value not in choices:
            raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    kind = choose_backend(manifest, backend)
    if precision == "auto":  # fp16 where it pays (TensorRT); ONNX Runtime on CPU runs float32
        precision = "fp16" if kind == "trt" else "fp32"
    denoiser = "denoiser_fp16" if precision == "fp16" else "denoiser"
    manifest.graph(denoiser)
    if graphs is None:
        graphs = (denoiser,) + ((("prior_step" if prior == "cache" else "prior_recompute"),) if manifest.meta.m else ())
    specs = {name: manifest.graph(name) for name in graphs}
    where = manifest.bundle
    if kind == "trt":
        if not manifest.engines:
            raise UserError(f"{where} has no TensorRT engines; build them with discodiff-export --trt, "
                            "or use --backend ort")
        from discodiff.runtime.backends.trt import TrtBackend

        missing = [g for g in specs if g not in manifest.engines]
        if missing:
            raise UserError(f"{where} has no engine for {', '.join(missing)}; rebuild with discodiff-export --trt")
        paths = {g: where / manifest.engines[g].file for g in specs}
        return TrtBackend(specs, paths, manifest.tensorrt or {}), denoiser
    from discodiff.runtime.backends.ort import OrtBackend

    paths = {g: where / specs[g].file for g in specs}
    return OrtBackend(specs, paths, device=device, threads=threads, spinning=spinning), denoiser


__all__ = ["BACKENDS", "PRECISIONS", "PRIORS", "DEVICES", "choose_backend", "load_backend", "REEXPORT"]
