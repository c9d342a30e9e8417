"""Serving a bundle behind Triton Inference Server (nvidia-pytriton): `discodiff-serve`.

    handler    Triton requests -> the one sampling core -> per-item samples, tokens and errors
    libpython  make Triton's Python stub load this interpreter's libpython
    server     bind the handler (dynamic batching, bounded queue, instances), run, drain on SIGTERM
    cli        the command
"""
