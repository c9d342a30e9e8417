"""ONNX Runtime backend: one InferenceSession per graph, created once."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...errors import UserError
from .base import Backend


def session_options(threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def providers(device: str) -> list[str]:
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("ONNX Runtime has no CUDA provider here; install onnxruntime-gpu on a CUDA host, "
                            "or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# Graphs too small to gain from a second thread. Each session has its own intra-op pool whose workers
# spin after a run; a multi-threaded prior session would keep spinning while the denoiser runs and slow
# it by ~4 % (measured with benchmarks/latency.py). One thread is also faster for the prior step itself.
SINGLE_THREAD_GRAPHS = ("prior_step", "prior_recompute")


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, specs: dict[str, dict], paths: dict[str, Path], device: str = "cpu", threads: int | None = None):
        super().__init__(specs)
        self.device = device
        prov = providers(device)
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name, path in paths.items():
            so = session_options(1 if name in SINGLE_THREAD_GRAPHS else threads)
            try:
                self.sessions[name] = ort.InferenceSession(str(path), sess_options=so, providers=prov)
            except Exception as e:  # noqa: BLE001 - ORT raises several types for a bad file
                raise UserError(f"ONNX Runtime cannot load {path} ({str(e).splitlines()[0][:200]}); "
                                "re-export the bundle with discodiff-export")
        self.outputs = {name: [o.name for o in s.get_outputs()] for name, s in self.sessions.items()}

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.sessions[graph].run(None, feeds)
        return dict(zip(self.outputs[graph], res))
