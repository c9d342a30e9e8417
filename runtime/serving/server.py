"""Triton Inference Server (inside nvidia-pytriton's wheel) serving one bundle as the model `discodiff`.

The bundle is opened and checked before anything binds a port. Triton's dynamic batcher merges
concurrent requests into one call of the handler (at most `max_batch` items, waiting at most
`queue_delay_us` for more); its queue is bounded and rejects requests beyond `max_queue` (HTTP 503 /
gRPC UNAVAILABLE) rather than growing. Several `instances` each own a runtime (their own ONNX Runtime
sessions) and run in parallel. One item may cost at most `max_calls` denoiser calls (handler.py).

Stopping. On SIGTERM or SIGINT Triton stops taking requests and those in flight may finish, but the
process is gone within `exit_timeout_s` of the signal whatever is in flight. The last min(4 s, half) of
that window is kept for Triton to unload the model (2-4 s here): a request still sampling then is cut
off at its next solver step and its items answered with an error; if the server has still not stopped
at the deadline (a graph call that does not return, a slow unload), it kills the Triton processes it
started, removes its workspace and exits at once. Exit code: 0 when every request in flight was answered
normally (also when the server was ended at the deadline with nothing in flight); 1 when answers were
lost: items cut off, or a request still in a handler when the server was ended.

Readiness. Triton's `/v2/health/ready` and `/v2/models/discodiff/ready` look at Triton only: once the
model's Python-backend stub (the process carrying requests from Triton to this one) is dead they stay
200 while every inference fails with 500. So the server watches its stub processes (and Triton, and
PyTriton's threads) every 0.25 s; when one dies it says so in one line, kills its Triton server at once
(its ports close, so health checks and load balancers see the replica down) and exits 1, for a
supervisor (systemd `Restart=on-failure`, a Kubernetes restart policy) to start it again. It does not
restart the stub itself: PyTriton has no way to connect a new stub to this process's handlers.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from discodiff.errors import UserError
from discodiff.runtime.cpu import cpu_policy
from discodiff.runtime.manifest import Manifest
from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.plan import PlanError, resolve_plan
from discodiff.runtime.serving.handler import MAX_CALLS, SampleHandler

MODEL = "discodiff"
STUB = "triton_python_backend_stub"
UNLOAD_RESERVE_S = 4.0          # of the exit timeout, kept for Triton to unload the model after a cut-off
WATCH_S = 0.25


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
    max_calls: int = MAX_CALLS


def open_instances(bundle: Path, opts: ServeOptions) -> tuple[Manifest, list[Pipeline]]:
    """Check the bundle and open one Pipeline per instance (all before any port is bound)."""
    manifest = Manifest.load(bundle)
    if opts.max_batch > manifest.sampling_batch_max:
        raise UserError(f"--max-batch {opts.max_batch} is above the bundle's limit {manifest.sampling_batch_max}; lower it "
                        "or re-export with a larger --max-batch")
    try:
        default = resolve_plan(manifest.meta, manifest.sampling)
    except PlanError as e:
        raise UserError(f"the bundle's default sampling settings cannot be served: {e}") from None
    if default.nfe > opts.max_calls:   # else every request without settings would be refused
        raise UserError(f"--max-calls {opts.max_calls} is below the bundle's default of {default.nfe} denoiser calls per "
                        f"sample ({default.solver} on {default.steps} levels); raise it to at least {default.nfe}")
    cpu = cpu_policy(opts.threads, "off" if opts.instances > 1 else "auto")   # instances must not spin against each other
    threads = opts.threads or max(1, cpu.threads // opts.instances)
    opened: list[Pipeline] = []
    spin = "on" if cpu.spinning else "off"
    try:
        for _ in range(opts.instances):
            opened.append(Pipeline.open(bundle, backend=opts.backend, precision=opts.precision, threads=threads, spin=spin,
                                        manifest=manifest))
    except BaseException:
        for b in opened:
            b.close()
        raise
    return manifest, opened


def tensors(manifest: Manifest):
    from pytriton.model_config import Tensor

    meta = manifest.meta
    sample = (Tensor(name="sample", dtype=np.uint8, shape=(meta.data_shape[1], meta.data_shape[2], 3)) if meta.is_image
              else Tensor(name="sample", dtype=np.float32, shape=tuple(meta.data_shape)))
    inputs = [Tensor(name="seed", dtype=np.int64, shape=(1,)),
              Tensor(name="class_label", dtype=np.int32, shape=(1,), optional=True)]
    outputs = [sample, Tensor(name="error", dtype=np.bytes_, shape=(1,))]
    if meta.m:   # a zero-size tokens output cannot be sent (PyTriton 0.7), so a plain model has none
        outputs.insert(1, Tensor(name="tokens", dtype=np.int32, shape=(meta.m,)))
    return inputs, outputs


# ----------------------------------------------------------------------------------- our Triton processes
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()   # the name before ')' may hold spaces
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid: int, parent: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in "ZXx" and st[1] == parent   # a zombie or a reused pid is not it


def _children(parent: int, program: str) -> list[int]:
    """Live children of `parent` running `program` (empty where /proc cannot be read)."""
    found = []
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if not _alive(pid, parent):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(argv0) == program.encode():
            found.append(pid)
    return found


@dataclass
class Processes:
    """The tritonserver this process started and the model's stubs under it, as (pid, parent pid)."""
    triton: list[tuple[int, int]] = field(default_factory=list)
    stubs: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def find(cls) -> "Processes":
        me = os.getpid()
        triton = [(t, me) for t in _children(me, "tritonserver")]
        return cls(triton, [(s, t) for t, _ in triton for s in _children(t, STUB)])

    def dead_stub(self) -> int | None:
        return next((pid for pid, parent in self.stubs if not _alive(pid, parent)), None)

    def kill(self) -> None:
        for pid, parent in self.triton + self.stubs:
            if _alive(pid, parent):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


# ----------------------------------------------------------------------------------- run and stop
def serve(bundle: Path, opts: ServeOptions, log=print, ready: threading.Event | None = None) -> int:
    """Run the server until SIGTERM/SIGINT or a dead stub; returns the exit code (0 after a clean drain). Ends
    the process itself (os._exit) when it cannot stop within the exit timeout."""
    t0 = time.perf_counter()
    manifest, opened = open_instances(bundle, opts)
    stop, stopping, signalled = threading.Event(), threading.Event(), []

    def on_signal(*_):
        signalled.append(time.monotonic())     # the exit timeout counts from the first signal
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        from discodiff.runtime.serving.libpython import LibpythonMismatch, ensure_stub_libpython

        try:
            log(ensure_stub_libpython())
        except LibpythonMismatch as e:
            raise UserError(str(e)) from None
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, TimeoutAction
        from pytriton.triton import Triton, TritonConfig
        from pytriton.utils.workspace import Workspace

        config = TritonConfig(http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host, grpc_port=opts.grpc_port,
                              metrics_address=opts.host, metrics_port=opts.metrics_port, exit_timeout_secs=opts.exit_timeout_s,
                              log_verbose=0)
        model_config = ModelConfig(max_batch_size=opts.max_batch, batcher=DynamicBatcher(
            max_queue_delay_microseconds=opts.queue_delay_us,
            default_queue_policy=QueuePolicy(max_queue_size=opts.max_queue, timeout_action=TimeoutAction.REJECT)))
        handlers = [SampleHandler(pipe, opts.max_batch, opts.max_calls, stopping) for pipe in opened]
        inputs, outputs = tensors(manifest)
        workspace, triton = Workspace(), None      # ours, so that an exit at the deadline can remove it
        try:
            triton = Triton(config=config, workspace=workspace)
            triton.bind(model_name=MODEL, infer_func=handlers if len(handlers) > 1 else handlers[0], inputs=inputs,
                        outputs=outputs, config=model_config, strict=True)
            triton.run()
        except BaseException:
            triton.stop() if triton is not None else workspace.clean()
            raise
        procs = Processes.find()
        log(f"serving {bundle} as model '{MODEL}' on http://{opts.host}:{opts.http_port} (gRPC {opts.grpc_port}, metrics "
            f"{opts.metrics_port}), {opts.instances} instance(s), batches up to {opts.max_batch}, at most {opts.max_calls} "
            f"denoiser calls per sample; ready in {time.perf_counter() - t0:.1f} s")
        if not procs.stubs:
            log(f"warning: no {STUB} process found under /proc, so a dead stub will not be noticed")
        if ready is not None:
            ready.set()
        code = watch(triton, procs, stop, opts.exit_timeout_s, log)
        deadline = (signalled[0] if signalled else time.monotonic()) + opts.exit_timeout_s
        return shut_down(triton, procs, workspace, handlers, stopping, deadline, code, log)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for b in opened:
            b.close()


def watch(triton, procs: Processes, stop: threading.Event, exit_timeout_s: int, log) -> int:
    """Until a signal (0) or a failure (1): a dead stub kills Triton at once, so readiness drops with it."""
    while not stop.wait(WATCH_S):
        dead = procs.dead_stub()
        if dead is not None:
            log(f"the model's Python-backend stub (pid {dead}) died, so the model cannot answer; stopping Triton and "
                "exiting 1 (restart the server, e.g. from a supervisor)")
            procs.kill()
            return 1
        if not triton.is_alive():
            log("the Triton server stopped on its own; see its log above")
            return 1
    log(f"stopping: finishing the requests in flight (the server is gone within {exit_timeout_s} s) ...")
    return 0


def _wait(done, until: float) -> bool:
    while not done():
        if time.monotonic() >= until:
            return False
        time.sleep(0.05)
    return True


def shut_down(triton, procs: Processes, workspace, handlers: list[SampleHandler], stopping: threading.Event,
              deadline: float, code: int, log) -> int:
    """Stop Triton by `deadline` (time.monotonic): let requests drain, then cut the batches in flight off, then
    end the process. Returns the exit code, or does not return."""
    reserve = max(0.0, min(UNLOAD_RESERVE_S, (deadline - time.monotonic()) / 2))
    stopper = threading.Thread(target=triton.stop, name="discodiff-stop", daemon=True)
    stopper.start()
    done = lambda: not stopper.is_alive() and not workspace.exists()   # noqa: E731 - stop() removes it last
    if not _wait(done, deadline - reserve):
        stopping.set()
    finished = _wait(done, deadline)
    cut = sum(h.cut_off for h in handlers)
    if cut:
        log(f"{cut} item(s) still sampling at the exit timeout were cut off and answered with an error")
        code = 1
    if finished:
        return code
    code = 1 if cut or any(h.busy for h in handlers) else code
    log(f"Triton had not stopped by the exit timeout; ending its processes and exiting {code}")
    procs.kill()
    shutil.rmtree(workspace.path, ignore_errors=True)
    from discodiff.runtime.serving.libpython import remove_shims

    remove_shims()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a handler thread may still be inside a graph call; nothing else would end the process
