"""Backends: run a named graph of a bundle on numpy arrays and report its time.

`ort` (ONNX Runtime, CPU or CUDA provider) is always available; `trt` (TensorRT engines through
polygraphy's CUDA wrapper, no torch) is imported lazily and only where TensorRT and a GPU exist.
"""
