"""`discodiff-serve`: a bundle behind Triton Inference Server (through PyTriton), with dynamic batching.

    discodiff-serve                                   # runs/shapes/bundle on 127.0.0.1:8000 (HTTP), 8001 (gRPC)
    discodiff-serve --bundle runs/toy8/bundle --instances 2 --max-batch 16

Clients send one seed (and optionally a class label) per item and the sampling settings as request
parameters; see the README's discodiff-serve section. Every parameter is bounded as discodiff-run bounds it, and one item may
cost at most --max-calls denoiser calls. Stop with SIGTERM or Ctrl-C: requests in flight may finish, and
the process is gone within --exit-timeout seconds whatever is in flight (exit 0 when every request was
answered, 1 when some were cut off). A dead Python-backend stub ends the server with exit 1, so that a
supervisor restarts it (server.py says why).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from discodiff.cli_util import CONTEXT, IntRange, main_for, run
from discodiff.runtime.bundle import BACKENDS, PRECISIONS
from discodiff.runtime.limits import MAX_STEPS
from discodiff.runtime.serving.handler import MAX_CALLS

DEFAULT_BUNDLE = Path("runs") / "shapes" / "bundle"
PORT = IntRange(1, 65535)
CORES = os.cpu_count() or 1          # --threads bound, as discodiff-run's


@click.command(context_settings=CONTEXT)
# what
@click.option("--bundle", type=click.Path(path_type=Path), default=DEFAULT_BUNDLE, show_default=True,
              help="Bundle directory written by discodiff-export.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
# where
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for every interface).")
@click.option("--http-port", type=PORT, default=8000, show_default=True)
@click.option("--grpc-port", type=PORT, default=8001, show_default=True)
@click.option("--metrics-port", type=PORT, default=8002, show_default=True)
# how much
@click.option("--max-batch", type=IntRange(1, 4096), default=32, show_default=True,
              help="Most items the dynamic batcher merges into one runtime batch.")
@click.option("--queue-delay-us", type=IntRange(0, 10_000_000), default=2000, show_default=True,
              help="How long the batcher waits for more requests to fill a batch.")
@click.option("--max-queue", type=IntRange(1, 1_000_000), default=256, show_default=True,
              help="Queued requests beyond this are rejected (HTTP 503) instead of waiting.")
@click.option("--instances", type=IntRange(1, 64), default=1, show_default=True,
              help="Model instances, each with its own runtime, run in parallel.")
@click.option("--threads", type=IntRange(1, CORES), default=None, help=f"ONNX Runtime threads per instance "
              f"(1..{CORES}; default: cores / instances).")
@click.option("--max-calls", type=IntRange(1, 2 * MAX_STEPS), default=MAX_CALLS, show_default=True,
              help="Most denoiser calls one sample may cost; an item asking for more gets its own error.")
@click.option("--exit-timeout", type=IntRange(1, 3600), default=10, show_default=True,
              help="On SIGTERM or SIGINT the process is gone within this many seconds; requests still sampling "
                   "near the end are cut off with an error.")
def command(bundle, backend, precision, host, http_port, grpc_port, metrics_port, max_batch, queue_delay_us,
            max_queue, instances, threads, max_calls, exit_timeout):
    """Serve a DisCo-Diff bundle as the Triton model 'discodiff': per item a seed (and optional class label),
    per request the sampling settings; per item the sample, its tokens and an error message (empty on
    success). The same seed gives the same sample as discodiff-run."""
    from discodiff.runtime.serving.server import ServeOptions, serve

    opts = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                     max_batch=max_batch, queue_delay_us=queue_delay_us, max_queue=max_queue, instances=instances,
                     backend=backend, precision=precision, threads=threads, exit_timeout_s=exit_timeout,
                     max_calls=max_calls)
    rc = serve(bundle, opts, log=lambda m: click.echo(m, err=True))
    if rc:
        sys.exit(rc)


main = main_for(command, "discodiff-serve")

if __name__ == "__main__":
    sys.exit(run(command, prog="discodiff-serve"))
