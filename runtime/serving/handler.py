"""The served model's request handler: Triton requests in, samples out, through the one sampling core.

Each request holds B items (input `seed` int64 [B, 1], optional `class_label` int32 [B, 1], -1 = drawn
from the seed) and its sampling settings as Triton request parameters (solver, schedule, nfe, steps,
guidance, temperature, top_k; the bundle's defaults otherwise). The dynamic batcher hands the handler
several requests at once, possibly with different settings: it groups them by settings and runs each
group as one runtime batch (in chunks of the bundle's batch limit). Every item is drawn from its own seed,
so a sample does not depend on which requests it was batched with, and equals `discodiff-run`'s.

A request that cannot be served gets its own one-line message in the `error` output (an exception
would fail every request of the batch); the others in the batch are answered normally.
Outputs: `sample` (uint8 [H, W, 3] for image models, the PNG pixels discodiff-run writes; float32 [D]
for vectors), `tokens` int32 [m] (absent when m = 0), `error` bytes [1] (empty on success).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from discodiff.runtime.draws import draw
from discodiff.runtime.images import to_uint8
from discodiff.runtime.plan import Plan, PlanError, plan
from discodiff.runtime.sampling import sample_batch

MAX_SEED = 2**62
PARAMS = ("solver", "schedule", "nfe", "steps", "guidance", "temperature", "top_k")
RESERVED = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout")


class RequestError(ValueError):
    """What is wrong with one request (sent back in its `error` output)."""


@dataclass(frozen=True)
class Settings:
    plan: Plan
    guidance: float
    temperature: float
    top_k: int

    @property
    def key(self) -> tuple:
        return (self.plan.solver, self.plan.schedule, self.plan.sigmas.tobytes(), self.guidance, self.temperature,
                self.top_k)


def _number(params: dict, name: str, default, low: float, kind=float):
    v = params.get(name, default)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
    if not ok or not math.isfinite(v) or v < low:
        raise RequestError(f"parameter {name} must be a{'n integer' if kind is int else ' finite number'} >= {low}, "
                           f"got {v!r}")
    return kind(v)


class SampleHandler:
    def __init__(self, model, sampling: dict, max_batch: int):
        self.model, self.meta, self.sampling, self.max_batch = model, model.meta, sampling, max_batch

    # ----------------------------------------------------------------------------------- parsing
    def settings(self, params: dict) -> Settings:
        params = dict(params or {})
        unknown = sorted(k for k in params if k not in PARAMS and k not in RESERVED and not k.startswith("triton_"))
        if unknown:
            raise RequestError(f"unknown parameter {unknown[0]!r}; the model takes {', '.join(PARAMS)}")
        for name in ("solver", "schedule"):
            if name in params and not isinstance(params[name], str):
                raise RequestError(f"parameter {name} must be a string, got {params[name]!r}")
        counts = {n: _number(params, n, None, 1, int) if n in params else None for n in ("nfe", "steps")}
        try:
            p = plan(self.meta, self.sampling, solver=params.get("solver"), schedule=params.get("schedule"),
                     bundle="the served bundle", **counts)
        except PlanError as e:
            raise RequestError(str(e)) from None
        return Settings(p, _number(params, "guidance", 1.0, 0), _number(params, "temperature", 1.0, 0),
                        _number(params, "top_k", 0, 0, int))

    def items(self, data: dict) -> tuple[np.ndarray, np.ndarray]:
        """(seeds int64 [B], class labels int32 [B], -1 = drawn) of one request's inputs."""
        if "seed" not in data:
            raise RequestError("input 'seed' is missing (int64 [1] per item)")
        seeds = np.asarray(data["seed"]).reshape(-1)
        if seeds.dtype != np.int64:
            raise RequestError(f"input 'seed' must be int64, got {seeds.dtype}")
        if (seeds < 0).any() or (seeds >= MAX_SEED).any():
            raise RequestError(f"seed must be in 0..{MAX_SEED - 1}")
        labels = np.full(len(seeds), -1, np.int32)
        if "class_label" in data:
            labels = np.asarray(data["class_label"]).reshape(-1).astype(np.int64)
            if len(labels) != len(seeds):
                raise RequestError("class_label must have one entry per seed")
            if not self.meta.num_classes and (labels != -1).any():
                raise RequestError("this model is unconditional; send class_label -1 or none")
            if (labels < -1).any() or (labels >= self.meta.num_classes).any():
                raise RequestError(f"class_label must be in 0..{self.meta.num_classes - 1} (or -1: drawn from the seed)")
            labels = labels.astype(np.int32)
        return seeds, labels

    # ----------------------------------------------------------------------------------- sampling
    def sample(self, settings: Settings, seeds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [n, *data_shape], tokens [n, m] for these items, in chunks of the batch limit."""
        xs, toks = [], []
        for i in range(0, len(seeds), self.max_batch):
            d = draw(seeds[i:i + self.max_batch], self.meta)
            fixed = labels[i:i + self.max_batch] >= 0
            d.labels = np.where(fixed, labels[i:i + self.max_batch], d.labels).astype(np.int32)
            x, tok = sample_batch(self.model, d, solver=settings.plan.solver, sigmas=settings.plan.sigmas,
                                  guidance=settings.guidance, temperature=settings.temperature, top_k=settings.top_k)
            xs.append(x)
            toks.append(tok)
        return np.concatenate(xs), np.concatenate(toks)

    def outputs(self, x: np.ndarray, tok: np.ndarray, errors: list[str]) -> dict:
        out = {"sample": to_uint8(x) if self.meta.is_image else x.astype(np.float32),
               "error": np.array([[e.encode()] for e in errors], dtype=np.object_)}
        if self.meta.m:
            out["tokens"] = tok.astype(np.int32)
        return out

    def failed(self, n: int, message: str) -> dict:
        shape = (n, *self.meta.data_shape)
        x = np.zeros(shape, np.float32)
        return self.outputs(x, np.full((n, self.meta.m), -1, np.int32), [message] * n)

    # ----------------------------------------------------------------------------------- requests
    def __call__(self, requests) -> list[dict]:
        """Triton requests (`.data` dict of inputs, `.parameters` dict) -> one response dict each."""
        parsed, groups = [], {}
        for r in requests:
            try:
                s = self.settings(getattr(r, "parameters", None))
                seeds, labels = self.items(r.data)
                parsed.append((s, seeds, labels))
                groups.setdefault(s.key, []).append(len(parsed) - 1)
            except RequestError as e:
                n = next((len(np.asarray(v)) for v in r.data.values()), 1)   # items: any input's batch axis
                parsed.append((None, n, " ".join(str(e).split()) or "bad request"))
        responses: list[dict | None] = [None] * len(requests)
        for idxs in groups.values():
            s = parsed[idxs[0]][0]
            seeds = np.concatenate([parsed[i][1] for i in idxs])
            labels = np.concatenate([parsed[i][2] for i in idxs])
            x, tok = self.sample(s, seeds, labels)
            start = 0
            for i in idxs:
                n = len(parsed[i][1])
                responses[i] = self.outputs(x[start:start + n], tok[start:start + n], [""] * n)
                start += n
        for i, p in enumerate(parsed):
            if p[0] is None:
                responses[i] = self.failed(p[1], p[2])
        return responses
