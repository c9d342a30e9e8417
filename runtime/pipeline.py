"""The Python object people call: a bundle (or any model of the model protocol) opened once, then called
with seeds and sampling options, returning one result type.

    from discodiff.runtime import Pipeline

    with Pipeline.open("runs/shapes/bundle") as pipe:
        out = pipe(range(16), nfe=8)          # Samples: x, tokens, labels, seeds, images, timing
        out.images.shape                      # (16, 16, 16, 3) uint8, the pixels discodiff-run writes

Opening owns everything a run needs and releases it on close: the manifest (checked and hashed), the
CPU policy (threads, spinning), the backend with its sessions, and the model adapter. `discodiff-run`,
the Triton handler (one Pipeline per instance), export parity and the benchmarks all go through it;
nothing else wires manifest -> plan -> CPU policy -> backend -> model. `Pipeline(model, ...)` wraps a
model that is already open (export parity runs before `manifest.json` exists; the torch reference passes
a `TorchModel`, see `discodiff.sampling.open_checkpoint`).

Every option is checked against `runtime.limits` and resolved by `runtime.plan` (so `nfe=N` means the
best setting measured for N calls, as on the command line and in the server); a sample that comes out
non-finite raises `NonFiniteSamples` naming its seeds, unless `nonfinite="keep"` asks for the mask.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from discodiff.errors import UserError
from discodiff.runtime.draws import Draws, draw
from discodiff.runtime.images import to_uint8
from discodiff.runtime.limits import MAX_CHURN, MAX_GUIDANCE, MAX_SEED, MAX_TEMPERATURE
from discodiff.runtime.plan import Plan, PlanError, resolve_plan
from discodiff.runtime.sampling import nonfinite_rows, sample_batch

DEFAULT_BATCH = 32
DEFAULT_SAMPLING = {"solver": "heun", "steps": 18, "schedule": "edm", "fitted": {}}   # a model without a manifest


class NonFiniteSamples(UserError):
    """Samples came out with NaN or inf; `seeds` names them. Nothing of their batch should be used."""

    def __init__(self, seeds: np.ndarray, what: str):
        self.seeds = np.asarray(seeds, np.int64)
        shown = ", ".join(str(s) for s in self.seeds[:5]) + (f" and {len(self.seeds) - 5} more" if len(self.seeds) > 5 else "")
        super().__init__(f"{len(self.seeds)} sample(s) came out non-finite (NaN or inf), seed(s) {shown}, with {what}; "
                         "nothing was written. Lower --guidance or try another --solver; if it persists, re-export the bundle")


@dataclass
class Samples:
    """What a call returns, for a whole call or (from `stream`) one batch of it."""

    x: np.ndarray                       # float32 [n, *data_shape]: images in [-1, 1] (CHW) or vectors
    tokens: np.ndarray                  # int32 [n, m], the latent tokens each sample was conditioned on
    labels: np.ndarray                  # int32 [n]; the prior's null label (= num_classes) when unconditional
    seeds: np.ndarray                   # int64 [n]
    plan: Plan | None = None            # solver, levels and calls per sample that produced them
    timing: dict = field(default_factory=dict)   # prior_s, ode_s, total_s
    nonfinite: np.ndarray | None = None  # bool [n] where nonfinite="keep" was asked for

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def images(self) -> np.ndarray | None:
        """uint8 [n, H, W, 3]: the pixels discodiff-run writes as PNGs (None for vector data)."""
        return to_uint8(self.x) if self.x.ndim == 4 else None

    @staticmethod
    def concatenate(parts: list["Samples"]) -> "Samples":
        if not parts:
            raise ValueError("no samples to concatenate")
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])   # noqa: E731
        timing = {k: sum(p.timing.get(k, 0.0) for p in parts) for k in ("prior_s", "ode_s", "total_s")}
        mask = None if parts[0].nonfinite is None else cat("nonfinite")
        return Samples(cat("x"), cat("tokens"), cat("labels"), cat("seeds"), parts[0].plan, timing, mask)


def _seeds(seeds) -> np.ndarray:
    """int64 [n] from any sequence of integer seeds, each in 0..MAX_SEED-1."""
    if seeds is None:
        raise PlanError("give seeds (or draws)")
    a = np.asarray(list(seeds) if not isinstance(seeds, np.ndarray) else seeds)
    if a.ndim != 1 or (len(a) and a.dtype.kind not in "iu"):
        raise PlanError("seeds must be a sequence of integers")
    a = a.astype(np.int64)
    if len(a) and ((a < 0).any() or (a >= MAX_SEED).any()):
        raise PlanError(f"seeds must be in 0..{MAX_SEED - 1}")
    return a


def _bounded(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise PlanError(f"{name} must be a finite number in {low}..{high}, got {value!r}")
    return float(value)


class Pipeline:
    """A model ready to sample: `pipe(seeds, **options) -> Samples`, `pipe.stream(...)` per batch.

    Args (of the constructor; most callers use `Pipeline.open`):
        model: any model of the protocol in `runtime.sampling` (a `BundleModel`, a `TorchModel`).
        sampling: the bundle's `sampling` block (default solver and steps, fitted schedules); a
            model without a manifest gets Heun on 18 EDM levels and no fits.
        manifest, backend, cpu: what `open` made, closed with the pipeline (None when not owned).
        name: how hints name the bundle (e.g. in "discodiff-fit --bundle NAME").
        recompute_prior: use the prior's no-cache graph (the baseline) instead of the KV cache.
        batch_max: the largest sampling batch the model takes.
    """

    def __init__(self, model, *, sampling: dict | None = None, manifest=None, backend=None, cpu=None,
                 name: str = "BUNDLE", recompute_prior: bool = False, batch_max: int | None = None,
                 denoiser: str = "denoiser"):
        self.model, self.meta = model, model.meta
        self.sampling = sampling if sampling is not None else dict(DEFAULT_SAMPLING)
        self.manifest, self.backend, self.cpu = manifest, backend, cpu
        self.name, self.recompute_prior, self.denoiser = name, recompute_prior, denoiser
        self.batch_max = batch_max
        self.closed = False

    # ----------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, bundle: str | Path, *, backend: str = "auto", precision: str = "auto", device: str = "cpu",
             threads: int | None = None, spin: str = "auto", prior: str = "cache",
             graphs: tuple[str, ...] | None = None, manifest=None) -> "Pipeline":
        """Check and open the bundle at `bundle` for sampling.

        Args:
            backend: "auto" (TensorRT where the bundle has engines and the machine can run them), "ort", "trt".
            precision: denoiser graph, "fp32", "fp16" or "auto" (fp16 on TensorRT, fp32 otherwise).
            device: ONNX Runtime device, "cpu" or "cuda".
            threads, spin: CPU policy (see `runtime.cpu.cpu_policy`); None / "auto" decide from the load.
            prior: "cache" (KV-cache step graph) or "recompute" (the no-cache baseline).
            graphs: load these graphs instead of what sampling needs (e.g. add "encoder").
            manifest: an already loaded `Manifest` of this bundle (skips reading it again).
        Raises `UserError` with one line for a bundle that does not hold together.
        """
        from discodiff.runtime.bundle import load_backend
        from discodiff.runtime.cpu import cpu_policy
        from discodiff.runtime.manifest import Manifest
        from discodiff.runtime.model import BundleModel

        manifest = manifest or Manifest.load(Path(bundle))
        cpu = cpu_policy(threads, spin)
        backend_, denoiser = load_backend(manifest, backend, precision, device, cpu.threads, prior, graphs,
                                          cpu.spinning)
        try:
            return cls(BundleModel(backend_, manifest.meta, denoiser=denoiser), sampling=manifest.sampling,
                       manifest=manifest, backend=backend_, cpu=cpu, name=str(bundle),
                       recompute_prior=prior == "recompute", batch_max=manifest.sampling_batch_max,
                       denoiser=denoiser)
        except BaseException:
            backend_.close()
            raise

    @classmethod
    def from_backend(cls, backend, meta, *, denoiser: str = "denoiser", **kwargs) -> "Pipeline":
        """Over graphs already loaded in `backend` (export parity runs before manifest.json exists);
        `meta` is the model's `ModelMeta`; the pipeline does not close a backend it did not open."""
        from discodiff.runtime.model import BundleModel

        return cls(BundleModel(backend, meta, denoiser=denoiser), denoiser=denoiser, **kwargs)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's sessions (or engines and device memory); safe to call twice."""
        if not self.closed and self.backend is not None:
            self.backend.close()
        self.closed = True

    # ----------------------------------------------------------------------------------- requests
    def plan(self, *, nfe: int | None = None, steps: int | None = None, solver: str | None = None,
             schedule: str | None = None) -> Plan:
        """What these options resolve to on this model (solver, levels, calls); `PlanError` if none."""
        return resolve_plan(self.meta, self.sampling, solver=solver, schedule=schedule, steps=steps, nfe=nfe,
                            bundle=self.name)

    def _check(self, guidance, churn, temperature, top_k, batch, p: Plan) -> None:
        _bounded(guidance, "guidance", 0, MAX_GUIDANCE)
        _bounded(churn, "churn", 0, MAX_CHURN)
        _bounded(temperature, "temperature", 0, MAX_TEMPERATURE)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 0 <= top_k <= self.meta.k:
            raise PlanError(f"top_k must be an integer in 0..{self.meta.k} (0 = all codes), got {top_k!r}")
        if churn > 0 and p.solver not in ("heun", "euler"):
            raise PlanError(f"churn works with the heun and euler solvers only (this run uses {p.solver})")
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1 \
                or (self.batch_max is not None and batch > self.batch_max):
            raise PlanError(f"batch must be an integer in 1..{self.batch_max or 'any'}, got {batch!r}")

    def _labels(self, class_label, n: int) -> np.ndarray | None:
        """int32 [n] with -1 = drawn from the seed, or None when every label is drawn."""
        if class_label is None:
            return None
        labels = np.asarray(class_label)
        if labels.dtype.kind not in "iu" or labels.ndim > 1:
            raise PlanError(f"class_label must be an integer or one integer per seed, got {class_label!r}")
        labels = np.broadcast_to(labels.astype(np.int64), (n,)) if labels.ndim == 0 else labels.astype(np.int64)
        if len(labels) != n:
            raise PlanError(f"class_label has {len(labels)} entries for {n} seeds")
        if not self.meta.num_classes and (labels != -1).any():
            raise PlanError("this model is unconditional; give no class_label (or -1)")
        if ((labels < -1) | (labels >= max(self.meta.num_classes, 1))).any():
            raise PlanError(f"class_label must be in 0..{self.meta.num_classes - 1} (or -1: drawn from the seed)")
        return labels.astype(np.int32)

    def stream(self, seeds: Iterable[int] | None = None, *, draws: Draws | None = None, nfe: int | None = None, steps: int | None = None,
               solver: str | None = None, schedule: str | None = None, sigmas: np.ndarray | None = None,
               guidance: float = 1.0, churn: float = 0.0, class_label=None, tokens: np.ndarray | None = None,
               temperature: float = 1.0, top_k: int = 0, batch: int | None = None,
               callback: Callable | None = None, nonfinite: str = "raise") -> Iterator[Samples]:
        """Sample `seeds` batch by batch (memory flat in the number of seeds): yields one `Samples` per batch.

        Args:
            seeds: per-sample seeds (ints in 0..2**62); sample i depends on seeds[i] alone.
            draws: instead of seeds, the draws themselves (benchmarks that edit noise or labels).
            nfe / steps / solver / schedule: the sampler, resolved by `plan` (nfe: denoiser calls per sample).
            sigmas: explicit float64 levels ending in 0 (overrides the four above; with `solver`).
            guidance: classifier-free guidance scale over the latents (1 = none).
            churn: EDM stochastic churn S_churn (heun and euler).
            class_label: None (drawn per seed), an int for every seed, or one per seed (-1 = drawn).
            tokens: int32 [n, m] latent tokens to condition on instead of the prior's.
            temperature, top_k: prior sampling (0 = greedy; 0 = all codes).
            batch: samples per model call (default 32, or the bundle's maximum if smaller).
            callback: `callback(step, x)` after each solver step (x: the batch's state).
            nonfinite: "raise" (NonFiniteSamples naming the seeds) or "keep" (Samples.nonfinite holds the mask).
        """
        seeds = _seeds(seeds) if draws is None else draws.seeds
        if sigmas is not None:
            sig = np.asarray(sigmas, np.float64)
            chosen = solver or self.sampling["solver"]
            from discodiff.runtime.solvers import nfe as solver_nfe

            p = Plan(chosen, "given", sig, solver_nfe(chosen, len(sig) - 1))
        else:
            p = self.plan(nfe=nfe, steps=steps, solver=solver, schedule=schedule)
        batch = batch if batch is not None else min(DEFAULT_BATCH, self.batch_max or DEFAULT_BATCH)
        self._check(guidance, churn, temperature, top_k, batch, p)
        if nonfinite not in ("raise", "keep"):
            raise PlanError(f"nonfinite must be 'raise' or 'keep', got {nonfinite!r}")
        labels = self._labels(class_label, len(seeds))
        if tokens is not None:
            tokens = np.asarray(tokens)
            if tokens.shape != (len(seeds), self.meta.m) or tokens.dtype.kind not in "iu" \
                    or (tokens.size and (tokens.min() < 0 or tokens.max() >= self.meta.k)):
                raise PlanError(f"tokens must be integers in 0..{self.meta.k - 1} of shape [{len(seeds)}, {self.meta.m}]")
            tokens = tokens.astype(np.int32)
        for start in range(0, len(seeds), batch):
            t0 = time.perf_counter()
            d = draws.take(slice(start, start + batch)) if draws is not None else \
                draw(seeds[start:start + batch], self.meta, None if labels is None else labels[start:start + batch])
            timing: dict = {}
            x, tok = sample_batch(self.model, d, solver=p.solver, sigmas=p.sigmas, guidance=guidance, churn=churn,
                                  temperature=temperature, top_k=top_k, recompute_prior=self.recompute_prior,
                                  tokens=None if tokens is None else tokens[start:start + batch],
                                  callback=callback, timing=timing)
            timing["total_s"] = time.perf_counter() - t0
            bad = nonfinite_rows(x)
            if nonfinite == "raise" and bad.any():
                raise NonFiniteSamples(d.seeds[bad], f"{p.solver} on {p.schedule}, guidance {guidance}")
            yield Samples(x, tok, d.labels, d.seeds, p, timing, bad if nonfinite == "keep" else None)

    def __call__(self, seeds: Iterable[int] | None = None, **options) -> Samples:
        """All of `seeds` at once (see `stream` for the options); one `Samples`."""
        parts = list(self.stream(seeds, **options))
        if not parts:
            p = self.plan(**{k: options.get(k) for k in ("nfe", "steps", "solver", "schedule")})
            return Samples(np.zeros((0, *self.meta.data_shape), np.float32), np.zeros((0, self.meta.m), np.int32),
                           np.zeros(0, np.int32), np.zeros(0, np.int64), p)
        return Samples.concatenate(parts)

    def calls(self) -> int:
        """Denoiser calls made so far (backends that count them; 0 otherwise)."""
        return self.backend.calls(self.denoiser) if self.backend is not None else 0
