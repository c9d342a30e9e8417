"""TensorRT backend: engines loaded once, device buffers allocated once (at the engine's max batch)
through polygraphy's CUDA wrapper, and the denoiser's enqueue captured as a CUDA graph per batch size.

No torch: device memory, streams and CUDA graphs go through the CUDA runtime (polygraphy.cuda plus
ctypes for the graph calls). Imported only when `--backend trt` (or auto with engines) asks for it.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from discodiff.errors import UserError
from discodiff.runtime.backends.base import Backend
from discodiff.runtime.contract import GraphSpec

REBUILD = "rebuild the engines on this machine with discodiff-export --trt"
CAPTURE_THREAD_LOCAL = 1   # cudaStreamCaptureModeThreadLocal


def available() -> tuple[bool, str]:
    """(True, "") where TensorRT imports and a GPU is visible; else (False, why)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed"
    try:
        from polygraphy import cuda

        count = ctypes.c_int(0)
        if cuda.wrapper().handle.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value < 1:
            return False, "no NVIDIA GPU is visible"
    except Exception as e:  # noqa: BLE001 - no libcudart / driver
        return False, f"the CUDA runtime cannot be loaded ({e})"
    return True, ""


class _Graph:
    """One engine: its context, device buffers at max batch, and captured CUDA graphs by batch."""

    def __init__(self, runtime, path: Path, spec: GraphSpec, cuda):
        from polygraphy.datatype import DataType

        self.spec, self.cuda = spec, cuda
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise UserError(f"TensorRT cannot load {path.name}; {REBUILD}")
        self.engine, self.context = engine, engine.create_execution_context()
        self.buffers = {}
        for t in spec.inputs + spec.outputs:   # allocated once, at the engine's max batch
            dtype = DataType.from_dtype(np.dtype(t.dtype))
            self.buffers[t.name] = cuda.DeviceArray(shape=t.concrete(spec.batch.max), dtype=dtype)
            self.context.set_tensor_address(t.name, self.buffers[t.name].ptr)
        self.graphs: dict[int, ctypes.c_void_p] = {}
        self.batch = None

    def set_batch(self, feeds: dict[str, np.ndarray]) -> int:
        batch = None
        for t in self.spec.inputs:
            a = feeds[t.name]
            self.context.set_input_shape(t.name, a.shape)
            if t.batched:
                batch = a.shape[t.shape.index("B")]
        return batch


class TrtBackend(Backend):
    """The graphs' TensorRT engines on GPU 0, the denoiser replayed as CUDA graphs.

    Args:
        specs: the contracts of the graphs to load, by name (buffers are allocated at their max batch).
        paths: each graph's engine file.
        stamp: what the engines were built for, the manifest's `tensorrt` block ({"tensorrt", "gpu",
            "compute_capability"}); an engine is only loaded on the TensorRT version and GPU it was built for.
        cuda_graph: the graphs whose enqueue is captured as a CUDA graph per batch size.
    Raises `UserError` (one line) where TensorRT or a GPU is missing, or the stamp does not match here.
    """

    name = "trt"

    def __init__(self, specs: dict[str, GraphSpec], paths: dict[str, Path], stamp: dict,
                 cuda_graph: tuple[str, ...] = ("denoiser", "denoiser_fp16")):
        ok, why = available()
        if not ok:
            raise UserError(f"the TensorRT backend needs TensorRT and an NVIDIA GPU ({why}); use --backend ort")
        import tensorrt as trt
        from polygraphy import cuda

        here = {"tensorrt": trt.__version__, **gpu_stamp()}
        for key, what in (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability")):
            if stamp.get(key) != here[key]:
                raise UserError(f"the bundle's engines were built for {what} {stamp.get(key)}, this machine has "
                                f"{here[key]}; {REBUILD}")
        super().__init__(specs)
        self.trt, self.cuda, self.rt = trt, cuda, cuda.wrapper().handle
        self.graphs: dict[str, _Graph] = {}
        self.capture = set(cuda_graph)
        try:
            self.logger = trt.Logger(trt.Logger.ERROR)
            self.runtime = trt.Runtime(self.logger)
            self.stream = cuda.Stream()
            for name in paths:
                self.graphs[name] = _Graph(self.runtime, paths[name], specs[name], cuda)
        except BaseException:
            self.close()
            raise

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self.graphs[graph]
        batch = g.set_batch(feeds)
        for name, a in feeds.items():
            _h2d(g.buffers[name], np.ascontiguousarray(a), self.stream)
        if graph in self.capture:
            self._launch_graph(g, batch)
        elif not g.context.execute_async_v3(self.stream.ptr):
            raise RuntimeError(f"TensorRT failed to run {graph}")
        out = {}
        for t in g.spec.outputs:
            shape = tuple(g.context.get_tensor_shape(t.name))
            host = np.empty(shape, np.dtype(t.dtype))
            g.buffers[t.name].view(shape=shape).copy_to(host, self.stream)
            out[t.name] = host
        self.stream.synchronize()
        return out

    def _launch_graph(self, g: _Graph, batch: int) -> None:
        """Replay the captured enqueue for this batch size; capture it on first use."""
        rt, s = self.rt, ctypes.c_void_p(self.stream.ptr)
        if batch not in g.graphs:
            if not g.context.execute_async_v3(self.stream.ptr):  # warm-up outside capture (lazy init)
                raise RuntimeError("TensorRT failed to run the denoiser")
            self.stream.synchronize()
            graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
            _check(rt.cudaStreamBeginCapture(s, CAPTURE_THREAD_LOCAL), "cudaStreamBeginCapture")
            g.context.execute_async_v3(self.stream.ptr)
            _check(rt.cudaStreamEndCapture(s, ctypes.byref(graph)), "cudaStreamEndCapture")
            _check(rt.cudaGraphInstantiate(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)), "cudaGraphInstantiate")
            rt.cudaGraphDestroy(graph)
            g.graphs[batch] = exe
        _check(rt.cudaGraphLaunch(g.graphs[batch], s), "cudaGraphLaunch")

    def _close(self) -> None:
        for g in self.graphs.values():
            for exe in g.graphs.values():
                self.rt.cudaGraphExecDestroy(exe)
            for b in g.buffers.values():
                b.free()
        if getattr(self, "stream", None) is not None:
            self.stream.free()


def _h2d(buf, host: np.ndarray, stream) -> None:
    buf.resize(host.shape)   # no reallocation: the buffer was allocated at max batch
    buf.copy_from(host, stream)


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with CUDA error {status}")


def gpu_stamp() -> dict:
    """Name and compute capability of GPU 0, through the CUDA runtime (no torch)."""
    from polygraphy import cuda

    rt = cuda.wrapper().handle
    major, minor = ctypes.c_int(), ctypes.c_int()
    rt.cudaDeviceGetAttribute(ctypes.byref(major), 75, 0)   # cudaDevAttrComputeCapabilityMajor
    rt.cudaDeviceGetAttribute(ctypes.byref(minor), 76, 0)   # cudaDevAttrComputeCapabilityMinor
    props = ctypes.create_string_buffer(8192)                # cudaDeviceProp starts with char name[256]
    rt.cudaGetDeviceProperties(props, 0)
    return {"gpu": props.raw[:256].split(b"\0", 1)[0].decode(errors="replace"),
            "compute_capability": f"{major.value}.{minor.value}"}
