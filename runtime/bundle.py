"""Opening a bundle for sampling: manifest checks, the backend over the graphs sampling needs, and the
model adapter over the backend, released together. `Pipeline.open` calls it; so does the schedule fit:

    with open_bundle("runs/shapes/bundle") as b:
        x, tokens = sample_batch(b.model, draws)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from discodiff.errors import UserError
from discodiff.runtime.manifest import REEXPORT, Manifest
from discodiff.runtime.model import BundleModel

BACKENDS = ("auto", "ort", "trt")
PRECISIONS = ("auto", "fp32", "fp16")
PRIORS = ("cache", "recompute")
DEVICES = ("cpu", "cuda")


@dataclass
class Opened:
    """What `open_bundle` returns: the checked manifest, the backend holding the loaded graphs, and the
    model adapter over it. A context manager: closing it releases the backend's sessions or engines."""

    manifest: Manifest
    backend: object
    model: BundleModel
    denoiser: str                  # which denoiser graph runs: "denoiser" or "denoiser_fp16"

    def __enter__(self) -> "Opened":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend (safe to call twice)."""
        self.backend.close()


def choose_backend(manifest: Manifest, backend: str) -> str:
    """"ort" or "trt" for the requested `backend`: "auto" is TensorRT where the bundle has engines and
    this machine can run them (TensorRT importable, a GPU visible), else ONNX Runtime."""
    if backend != "auto":
        return backend
    if not manifest.engines:
        return "ort"
    from discodiff.runtime.backends.trt import available

    return "trt" if available()[0] else "ort"


def open_bundle(bundle: Path, backend: str = "auto", precision: str = "auto", device: str = "cpu",
                threads: int | None = None, prior: str = "cache", graphs: tuple[str, ...] | None = None,
                spinning: bool = True, manifest: Manifest | None = None) -> Opened:
    """Check the bundle and load what sampling needs on one backend.

    Args:
        bundle: the bundle directory.
        backend: "auto", "ort" or "trt" (`choose_backend`).
        precision: "fp32", "fp16" or "auto" (fp16 on TensorRT, fp32 on ONNX Runtime): which denoiser graph.
        device: ONNX Runtime's device, "cpu" or "cuda".
        threads, spinning: ONNX Runtime's intra-op threads (None: every core) and whether idle ones spin.
        prior: "cache" (the KV-cache step graph) or "recompute" (the no-cache baseline).
        graphs: load exactly these graphs instead (e.g. add "encoder").
        manifest: the bundle's manifest if already loaded (not read again).
    Returns:
        An `Opened` (manifest, backend, model, denoiser name); use it as a context manager.
    Raises `UserError` (one line) for a bad option or a bundle that does not hold together.
    """
    for value, choices, what in ((backend, BACKENDS, "backend"), (precision, PRECISIONS, "precision"),
                                 (prior, PRIORS, "prior"), (device, DEVICES, "device")):
        if value not in choices:
            raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    man = manifest or Manifest.load(Path(bundle))
    kind = choose_backend(man, backend)
    if precision == "auto":  # fp16 where it pays (TensorRT); ONNX Runtime on CPU runs float32
        precision = "fp16" if kind == "trt" else "fp32"
    denoiser = "denoiser_fp16" if precision == "fp16" else "denoiser"
    man.graph(denoiser)
    if graphs is None:
        graphs = (denoiser,) + ((("prior_step" if prior == "cache" else "prior_recompute"),) if man.meta.m else ())
    specs = {name: man.graph(name) for name in graphs}
    if kind == "trt":
        if not man.engines:
            raise UserError(f"{bundle} has no TensorRT engines; build them with discodiff-export --trt, "
                            "or use --backend ort")
        from discodiff.runtime.backends.trt import TrtBackend

        missing = [g for g in specs if g not in man.engines]
        if missing:
            raise UserError(f"{bundle} has no engine for {', '.join(missing)}; rebuild with discodiff-export --trt")
        paths = {g: man.bundle / man.engines[g].file for g in specs}
        be = TrtBackend(specs, paths, man.tensorrt or {})
    else:
        from discodiff.runtime.backends.ort import OrtBackend

        paths = {g: man.bundle / specs[g].file for g in specs}
        be = OrtBackend(specs, paths, device=device, threads=threads, spinning=spinning)
    try:
        return Opened(man, be, BundleModel(be, man.meta, denoiser=denoiser), denoiser)
    except BaseException:
        be.close()
        raise


__all__ = ["BACKENDS", "PRECISIONS", "PRIORS", "DEVICES", "Opened", "open_bundle", "REEXPORT"]
