"""Torch-free runtime: loads a bundle written by `discodiff-export` and samples from it.

Imports numpy, onnxruntime and opencv only; TensorRT and polygraphy are imported lazily by the
TensorRT backend. Never imports torch or the training code: the bundle is the only input.
"""
