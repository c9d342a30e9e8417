"""ONNX Runtime backend: one InferenceSession per graph, created once, checked against its contract."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from discodiff.errors import UserError
from discodiff.runtime.backends.base import Backend
from discodiff.runtime.contract import GraphSpec

REEXPORT = "re-export the bundle with discodiff-export"
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
             "tensor(int64)": "int64"}


def session_options(threads: int | None = None, spinning: bool = True) -> ort.SessionOptions:
    """Full graph optimisation, sequential execution, `threads` intra-op threads (None: every core) that
    spin between ops unless `spinning` is False."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spinning:  # idle pool threads sleep instead of spinning: slower alone, far kinder to a shared machine
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for "cpu" or "cuda"; one UserError line where CUDA is missing."""
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


def check_io(session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
    """The graph file's own inputs and outputs are the contract's: names, order, dtypes and ranks."""
    for kind, got, want in (("inputs", session.get_inputs(), spec.inputs), ("outputs", session.get_outputs(), spec.outputs)):
        have = [(a.name, ORT_TYPES.get(a.type, a.type), len(a.shape)) for a in got]
        need = [(t.name, t.dtype, len(t.shape)) for t in want]
        if have != need:
            raise UserError(f"{path.name} does not hold the {spec.name} graph its manifest describes ({kind} "
                            f"{[h[0] for h in have]} against {[n[0] for n in need]}); {REEXPORT}")


class OrtBackend(Backend):
    """The graphs on ONNX Runtime, one session each, each file's I/O checked against its contract.

    Args:
        specs: the contracts of the graphs to load, by name.
        paths: each graph's .onnx file (its external data beside it).
        device: "cpu" or "cuda" (`providers`).
        threads, spinning: intra-op threads and spinning (`session_options`); the prior graphs always get
            one thread (SINGLE_THREAD_GRAPHS).
    Raises `UserError` (one line) for a file ONNX Runtime cannot load or one that holds another graph.
    """

    name = "ort"

    def __init__(self, specs: dict[str, GraphSpec], paths: dict[str, Path], device: str = "cpu",
                 threads: int | None = None, spinning: bool = True):
        super().__init__(specs)
        self.device = device
        prov = providers(device)
        self.sessions: dict[str, ort.InferenceSession] = {}
        try:
            for name, path in paths.items():
                so = session_options(1 if name in SINGLE_THREAD_GRAPHS else threads, spinning)
                try:
                    sess = ort.InferenceSession(str(path), sess_options=so, providers=prov)
                except Exception as e:  # noqa: BLE001 - ORT raises several types for a bad file
                    raise UserError(f"ONNX Runtime cannot load {path} ({str(e).splitlines()[0][:200]}); {REEXPORT}")
                check_io(sess, specs[name], Path(path))
                self.sessions[name] = sess
        except BaseException:
            self.close()
            raise
        self.outputs = {name: [o.name for o in s.get_outputs()] for name, s in self.sessions.items()}

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.sessions[graph].run(None, feeds)
        return dict(zip(self.outputs[graph], res))

    def _close(self) -> None:
        self.sessions.clear()
