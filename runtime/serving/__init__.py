"""Serving a bundle behind Triton Inference Server (nvidia-pytriton): `discodiff-serve`.

    handler    Triton requests -> the one sampling core -> per-item samples, tokens and errors (bounded work)
    libpython  make Triton's Python stub load this interpreter's libpython
    server     bind the handler (dynamic batching, bounded queue, instances), run; on SIGTERM gone within
               the exit timeout; a dead Python-backend stub ends it (exit 1) so readiness tells the truth
    cli        the command
"""
