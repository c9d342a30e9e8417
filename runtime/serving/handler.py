"""The served model's request handler: Triton requests in, samples out, through the instance's Pipeline.

Each request holds B items (input `seed` int64 [B, 1], optional `class_label` int32 [B, 1], -1 = drawn
from the seed) and its sampling settings as Triton request parameters (solver, schedule, nfe, steps,
guidance, temperature, top_k; the bundle's defaults otherwise). The dynamic batcher hands the handler
several requests at once, possibly with different settings: it groups them by settings and runs each
group as one runtime batch (in chunks of the bundle's batch limit). Every item is drawn from its own seed,
so a sample does not depend on which requests it was batched with, and equals `discodiff-run`'s.

Every parameter is bounded as discodiff-run bounds it (discodiff.runtime.limits; top_k by the model's k),
and so is the work of one item: a plan needing more than `max_calls` denoiser calls per sample is refused
(guidance's doubled batch does not count: it is one call), so no request can hold an instance for hours.

A request that cannot be served gets its own one-line message in the `error` output (an exception
would fail every request of the batch); the others in the batch are answered normally. So does an item
whose sample came out non-finite (NaN/inf): it is never returned as a success. When the server is
stopping (`stopping` set), sampling stops at the next solver step and the unfinished items are answered
with an error saying so.
Outputs: `sample` (uint8 [H, W, 3] for image models, the PNG pixels discodiff-run writes; float32 [D]
for vectors; zeros for a failed item), `tokens` int32 [m] (absent when m = 0; -1 for a failed item),
`error` bytes [1] (empty on success).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from discodiff.runtime.images import to_uint8
from discodiff.runtime.limits import MAX_GUIDANCE, MAX_NFE, MAX_SEED, MAX_STEPS, MAX_TEMPERATURE
from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.plan import Plan, PlanError

MAX_CALLS = 400             # default bound on denoiser calls per sample (discodiff-serve --max-calls)
PARAMS = ("solver", "schedule", "nfe", "steps", "guidance", "temperature", "top_k")
RESERVED = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout")
STOPPING = "the server is stopping and this sample was not finished; send the request again (to another replica)"


class RequestError(ValueError):
    """What is wrong with one request (sent back in its `error` output)."""


class Stopping(Exception):
    """The server is shutting down: abandon the batch in flight."""


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


def _number(params: dict, name: str, default, low: float, high: float, kind=float):
    v = params.get(name, default)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
    if not ok or not math.isfinite(v) or not low <= v <= high:
        what = "an integer" if kind is int else "a finite number"
        raise RequestError(f"parameter {name} must be {what} in {low:g}..{high:g}, got {v!r}")
    return kind(v)


class SampleHandler:
    """Answers a batch of Triton requests with one instance's `Pipeline` (see the module docstring).

    Args:
        pipe: the instance's Pipeline (one per Triton instance; the server opens and closes it).
        max_batch: samples per model call (at most the bundle's sampling batch).
        max_calls: denoiser calls one sample may cost (discodiff-serve --max-calls).
        stopping: set by the server on SIGTERM; sampling stops at the next solver step.
    """

    def __init__(self, pipe: Pipeline, max_batch: int, max_calls: int = MAX_CALLS,
                 stopping: threading.Event | None = None):
        self.pipe, self.meta, self.max_batch = pipe, pipe.meta, max_batch
        self.max_calls, self.stopping = max_calls, stopping or threading.Event()
        self.cut_off = 0            # items answered with STOPPING (the server's exit code counts them)
        self.busy = 0               # calls in progress (one at a time per instance)

    # ----------------------------------------------------------------------------------- parsing
    def settings(self, params: dict) -> Settings:
        params = dict(params or {})
        unknown = sorted(k for k in params if k not in PARAMS and k not in RESERVED and not k.startswith("triton_"))
        if unknown:
            raise RequestError(f"unknown parameter {unknown[0]!r}; the model takes {', '.join(PARAMS)}")
        for name in ("solver", "schedule"):
            if name in params and not isinstance(params[name], str):
                raise RequestError(f"parameter {name} must be a string, got {params[name]!r}")
        counts = {n: _number(params, n, None, 1, high, int) if n in params else None
                  for n, high in (("nfe", MAX_NFE), ("steps", MAX_STEPS))}
        try:
            p = self.pipe.plan(solver=params.get("solver"), schedule=params.get("schedule"), **counts)
        except PlanError as e:
            raise RequestError(str(e)) from None
        if p.nfe > self.max_calls:
            raise RequestError(f"this request needs {p.nfe} denoiser calls per sample ({p.solver} on {p.steps} "
                               f"levels) and this server allows at most {self.max_calls} (discodiff-serve "
                               "--max-calls); ask for fewer steps or nfe")
        return Settings(p, _number(params, "guidance", 1.0, 0, MAX_GUIDANCE),
                        _number(params, "temperature", 1.0, 0, MAX_TEMPERATURE),
                        _number(params, "top_k", 0, 0, self.meta.k, int))

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
    def _check_stopping(self, *_):
        if self.stopping.is_set():
            raise Stopping

    def sample(self, settings: Settings, seeds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
        """x [n, *data_shape], tokens [n, m] and the non-finite mask [n] for these items (labels -1 = drawn
        from the seed), in chunks of the batch limit; raises Stopping at the next solver step once the
        server is stopping."""
        p = settings.plan
        parts = []
        for part in self.pipe.stream(seeds, solver=p.solver, sigmas=p.sigmas, guidance=settings.guidance,
                                     temperature=settings.temperature, top_k=settings.top_k,
                                     class_label=labels if self.meta.num_classes else None, batch=self.max_batch,
                                     callback=self._check_stopping, nonfinite="keep"):
            parts.append(part)
        return (np.concatenate([q.x for q in parts]), np.concatenate([q.tokens for q in parts]),
                np.concatenate([q.nonfinite for q in parts]))

    def answer(self, settings: Settings, seeds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """(x, tokens, error per item) of one group: a non-finite sample fails its own item, naming its seed."""
        try:
            self._check_stopping()
            x, tok, bad = self.sample(settings, seeds, labels)
        except Stopping:
            self.cut_off += len(seeds)
            return self._blank(len(seeds)) + ([STOPPING] * len(seeds),)
        p = settings.plan
        errors = [f"sample for seed {s} is not finite (NaN/inf) with {p.solver} on {p.schedule} levels, guidance "
                  f"{settings.guidance:g}; lower guidance or try another solver" if b else ""
                  for s, b in zip(seeds.tolist(), bad.tolist())]
        return x, tok, errors

    def _blank(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((n, *self.meta.data_shape), np.float32), np.full((n, self.meta.m), -1, np.int32)

    def outputs(self, x: np.ndarray, tok: np.ndarray, errors: list[str]) -> dict:
        """The response of one request; an item with an error gets zeros (a black image) and tokens -1."""
        failed = np.array([bool(e) for e in errors], bool)
        x, tok = x.copy(), tok.astype(np.int32)
        x[failed], tok[failed] = 0.0, -1                # no NaN is converted, none leaves the server
        sample = to_uint8(x) if self.meta.is_image else x.astype(np.float32)
        sample[failed] = 0
        out = {"sample": sample, "error": np.array([[e.encode()] for e in errors], dtype=np.object_)}
        if self.meta.m:
            out["tokens"] = tok
        return out

    def failed(self, n: int, message: str) -> dict:
        return self.outputs(*self._blank(n), [message] * n)

    # ----------------------------------------------------------------------------------- requests
    def __call__(self, requests) -> list[dict]:
        """Triton requests (`.data` dict of inputs, `.parameters` dict) -> one response dict each."""
        self.busy += 1
        try:
            return self._answer_all(requests)
        finally:
            self.busy -= 1

    def _answer_all(self, requests) -> list[dict]:
        responses: list[dict | None] = [None] * len(requests)
        groups: dict[tuple, list] = {}
        for i, r in enumerate(requests):
            try:
                s = self.settings(getattr(r, "parameters", None))
                seeds, labels = self.items(r.data)
                groups.setdefault(s.key, []).append((i, s, seeds, labels))
            except RequestError as e:
                n = next((len(np.asarray(v)) for v in r.data.values()), 1)   # items: any input's batch axis
                responses[i] = self.failed(n, " ".join(str(e).split()) or "bad request")
        for members in groups.values():
            s = members[0][1]
            x, tok, errors = self.answer(s, np.concatenate([m[2] for m in members]),
                                         np.concatenate([m[3] for m in members]))
            start = 0
            for i, _, seeds, _ in members:
                n = len(seeds)
                responses[i] = self.outputs(x[start:start + n], tok[start:start + n], errors[start:start + n])
                start += n
        return responses
