"""The model protocol (see `runtime.sampling`) over a bundle's graphs on one backend.

The denoiser call feeds exactly the inputs its graph takes; the prior step keeps its static-size KV
cache between positions (or, with `recompute`, runs the no-cache graph on the whole buffer, the causal
mask hiding the tail).
"""
from __future__ import annotations

import numpy as np

from discodiff.runtime.contract import ModelMeta


class BundleModel:
    """The model protocol of `runtime.sampling` over a backend holding a bundle's graphs.

    Args:
        backend: a `Backend` with the denoiser graph and, for m > 0, a prior graph loaded.
        meta: the model facts (the manifest's `ModelMeta`).
        denoiser: which denoiser graph runs, "denoiser" (fp32) or "denoiser_fp16".
    """

    xp = np                             # the array module the sampling core computes with

    def __init__(self, backend, meta: ModelMeta, denoiser: str = "denoiser"):
        self.backend, self.meta, self.denoiser = backend, meta, denoiser
        self._takes = set(backend.specs[denoiser].input_names)

    @staticmethod
    def asarray(a: np.ndarray) -> np.ndarray:
        """numpy in, the model's arrays out: here numpy already (the torch adapter makes tensors)."""
        return a

    @staticmethod
    def numpy(x: np.ndarray) -> np.ndarray:
        """The model's arrays back to numpy: here the identity."""
        return x

    def denoise(self, x: np.ndarray, sigma: np.ndarray, tokens: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """D(x; sigma): x float32 [B, *data_shape], sigma float32 [B], tokens int32 [B, m], labels int32 [B]
        -> float32 [B, *data_shape]. Only the inputs the graph takes are fed (no tokens when m = 0, no
        labels when unconditional)."""
        feeds = {"x": np.ascontiguousarray(x, np.float32), "sigma": sigma}
        if "tokens" in self._takes:
            feeds["tokens"] = tokens
        if "class_labels" in self._takes:
            feeds["class_labels"] = labels
        return self.backend.run(self.denoiser, feeds)["denoised"]

    def prior_step(self, batch: int, recompute: bool = False):
        """`step(prev int32 [B], pos) -> logits [B, k]` over the KV-cache step graph or the recompute graph."""
        run = self.backend.run
        if not recompute:
            shape = self.backend.specs["prior_step"].input("k_cache").concrete(batch)   # [L, B, H, m, Dh]
            state = {"k_cache": np.zeros(shape, np.float32), "v_cache": np.zeros(shape, np.float32)}

            def step(prev: np.ndarray, pos: int) -> np.ndarray:
                out = run("prior_step", {"token": np.ascontiguousarray(prev, np.int32),
                                         "pos": np.array([pos], np.int32), **state})
                state["k_cache"], state["v_cache"] = out["k_cache_out"], out["v_cache_out"]
                return out["logits"]
        else:
            seq = np.zeros((batch, self.meta.m), np.int32)   # full buffer; the causal mask hides the tail

            def step(prev: np.ndarray, pos: int) -> np.ndarray:
                seq[:, pos] = prev
                return run("prior_recompute", {"tokens": seq})["logits"][:, pos]

        return step
