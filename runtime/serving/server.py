"""Triton Inference Server (inside nvidia-pytriton's wheel) serving one bundle as the model `discodiff`.

The bundle is opened and checked before anything binds a port. Triton's dynamic batcher merges
concurrent requests into one call of the handler (at most `max_batch` items, waiting at most
`queue_delay_us` for more); its queue is bounded and rejects requests beyond `max_queue` (HTTP 503 /
gRPC UNAVAILABLE) rather than growing. Several `instances` each own a runtime (their own ONNX Runtime
sessions) and run in parallel. SIGTERM or SIGINT: Triton stops taking requests, finishes those in
flight, and the server exits 0.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discodiff.errors import UserError
from discodiff.runtime.bundle import Opened, open_bundle
from discodiff.runtime.cpu import plan_cpu
from discodiff.runtime.manifest import Manifest
from discodiff.runtime.serving.handler import SampleHandler

MODEL = "discodiff"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 32
    queue_delay_us: int = 2000
    max_queue: int = 256
    instances: int = 1
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    exit_timeout_s: int = 10


def open_instances(bundle: Path, o: ServeOptions) -> tuple[Manifest, list[Opened]]:
    """Check the bundle and open one runtime per instance (all before any port is bound)."""
    man = Manifest.load(bundle)
    if o.max_batch > man.sampling_batch_max:
        raise UserError(f"--max-batch {o.max_batch} is above the bundle's limit {man.sampling_batch_max}; lower it "
                        "or re-export with a larger --max-batch")
    cpu = plan_cpu(o.threads, "off" if o.instances > 1 else "auto")   # instances must not spin against each other
    threads = o.threads or max(1, cpu.threads // o.instances)
    opened: list[Opened] = []
    try:
        for _ in range(o.instances):
            opened.append(open_bundle(bundle, o.backend, o.precision, threads=threads, spinning=cpu.spinning,
                                      manifest=man))
    except BaseException:
        for b in opened:
            b.close()
        raise
    return man, opened


def tensors(man: Manifest):
    from pytriton.model_config import Tensor

    meta = man.meta
    sample = (Tensor(name="sample", dtype=np.uint8, shape=(meta.data_shape[1], meta.data_shape[2], 3)) if meta.is_image
              else Tensor(name="sample", dtype=np.float32, shape=tuple(meta.data_shape)))
    inputs = [Tensor(name="seed", dtype=np.int64, shape=(1,)),
              Tensor(name="class_label", dtype=np.int32, shape=(1,), optional=True)]
    outputs = [sample, Tensor(name="error", dtype=np.bytes_, shape=(1,))]
    if meta.m:   # a zero-size tokens output cannot be sent (PyTriton 0.7), so a plain model has none
        outputs.insert(1, Tensor(name="tokens", dtype=np.int32, shape=(meta.m,)))
    return inputs, outputs


def serve(bundle: Path, o: ServeOptions, log=print, ready: threading.Event | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
    t0 = time.perf_counter()
    man, opened = open_instances(bundle, o)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        from discodiff.runtime.serving.libpython import LibpythonMismatch, ensure_stub_libpython

        try:
            log(ensure_stub_libpython())
        except LibpythonMismatch as e:
            raise UserError(str(e)) from None
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, TimeoutAction
        from pytriton.triton import Triton, TritonConfig

        config = TritonConfig(http_address=o.host, http_port=o.http_port, grpc_address=o.host, grpc_port=o.grpc_port,
                              metrics_address=o.host, metrics_port=o.metrics_port, exit_timeout_secs=o.exit_timeout_s,
                              log_verbose=0)
        model_config = ModelConfig(max_batch_size=o.max_batch, batcher=DynamicBatcher(
            max_queue_delay_microseconds=o.queue_delay_us,
            default_queue_policy=QueuePolicy(max_queue_size=o.max_queue, timeout_action=TimeoutAction.REJECT)))
        handlers = [SampleHandler(b.model, man.sampling, o.max_batch) for b in opened]
        inputs, outputs = tensors(man)
        triton = Triton(config=config)
        try:
            triton.bind(model_name=MODEL, infer_func=handlers if len(handlers) > 1 else handlers[0], inputs=inputs,
                        outputs=outputs, config=model_config, strict=True)
            triton.run()
            log(f"serving {bundle} as model '{MODEL}' on http://{o.host}:{o.http_port} (gRPC {o.grpc_port}, metrics "
                f"{o.metrics_port}), {o.instances} instance(s), batches up to {o.max_batch}; ready in "
                f"{time.perf_counter() - t0:.1f} s")
            if ready is not None:
                ready.set()
            while not stop.wait(0.25):
                if not triton.is_alive():
                    log("the Triton server stopped on its own; see its log above")
                    return 1
            log("stopping: finishing the requests in flight ...")
        finally:
            triton.stop()
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for b in opened:
            b.close()
