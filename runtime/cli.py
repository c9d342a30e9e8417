"""`discodiff-run`: sample from a bundle with the torch-free runtime, prior first, then the ODE.

    discodiff-run --n 32                      # the default bundle runs/shapes/bundle -> runs/shapes/samples
    discodiff-run --bundle runs/toy8/bundle --n 4000 --solver dpm2m --steps 10
    discodiff-run --n 1000 --shard 0/4        # this machine's quarter; the 4 shards union to the full run

Sample i has seed --seed + i; its draws (class, tokens, noise) come from that seed alone, so files do
not change with --batch, the backend or sharding. Draws are made per batch and results streamed to
disk, so memory does not grow with --n.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import click
import numpy as np

from discodiff.cli_util import CONTEXT, FloatRange, IntRange, main_for, run
from discodiff.errors import UserError
from discodiff.runtime.bundle import BACKENDS, DEVICES, PRECISIONS, PRIORS
from discodiff.runtime.cpu import SPIN
from discodiff.runtime.limits import MAX_CHURN, MAX_GUIDANCE, MAX_NFE, MAX_SEED, MAX_STEPS, MAX_TEMPERATURE
from discodiff.runtime.plan import PLAN_SCHEDULES, PlanError, resolve_plan
from discodiff.runtime.solvers import SOLVERS

DEFAULT_BUNDLE = Path("runs") / "shapes" / "bundle"
CORES = os.cpu_count() or 1


class Shard(click.ParamType):
    """i/N: this process's share of the seeds (0 <= i < N)."""

    name = "i/N"

    def convert(self, value, param, ctx):
        m = re.fullmatch(r"([0-9]+)/([0-9]+)", str(value).strip())
        if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
            self.fail(f"{value!r} is malformed; write i/N with 0 <= i < N, e.g. 0/4", param, ctx)
        return int(m.group(1)), int(m.group(2))


def shard_seeds(seed: int, n: int, shard: tuple[int, int] | None) -> np.ndarray:
    seeds = np.arange(seed, seed + n, dtype=np.int64)
    return seeds if shard is None else np.array_split(seeds, shard[1])[shard[0]]


def parse_class(value: str | None, num_classes: int, names: list[str]) -> int | None:
    if value is None:
        return None
    if not num_classes:
        raise UserError("--class was given but this model is unconditional; drop --class")
    if value in names:
        return names.index(value)
    if value.isascii() and value.isdigit() and int(value) < num_classes:
        return int(value)
    hint = f" ({', '.join(names)})" if names else ""
    raise UserError(f"--class {value!r} is not a class of this model; use 0..{num_classes - 1}{hint}")


@click.command(context_settings=CONTEXT)
# what to sample
@click.option("--bundle", type=click.Path(path_type=Path), default=DEFAULT_BUNDLE, show_default=True,
              help="Bundle directory written by discodiff-export.")
@click.option("--n", "n", type=IntRange(1, MAX_SEED), default=32, show_default=True,
              help="Number of samples (seeds --seed .. --seed+n-1).")
@click.option("--seed", type=IntRange(0, MAX_SEED), default=0, show_default=True, help="Seed of the first sample.")
@click.option("--class", "class_", type=str, default=None,
              help="Class index or name for every sample (default: drawn per sample from its seed).")
@click.option("--shard", type=Shard(), default=None, help="Produce only shard i of N (i/N, 0-based).")
# how: solver and guidance
@click.option("--nfe", type=IntRange(1, MAX_NFE), default=None,
              help="Denoiser calls per sample, with the best setting measured for that many: the schedule fitted "
                   "for them where the bundle has one (discodiff-fit), else the solver and schedule the frontier "
                   "benchmark measured best without a fit (a line says which).")
@click.option("--solver", type=click.Choice(SOLVERS), default=None,
              help="ODE solver (default: the fitted schedule's, else the bundle's).")
@click.option("--schedule", type=click.Choice(PLAN_SCHEDULES), default=None,
              help="Noise levels: edm (rho=7), logsnr (uniform in log sigma) or fitted (needs --nfe).")
@click.option("--steps", type=IntRange(1, MAX_STEPS), default=None,
              help="Noise levels N (default: the bundle's). Heun uses 2N-1 evaluations, the others N.")
@click.option("--churn", type=FloatRange(0, MAX_CHURN), default=0.0, show_default=True,
              help="EDM stochastic churn S_churn (heun/euler).")
@click.option("--guidance", type=FloatRange(0, MAX_GUIDANCE), default=1.0, show_default=True,
              help="Classifier-free guidance scale over the latents (1 = none).")
@click.option("--temperature", type=FloatRange(0, MAX_TEMPERATURE), default=1.0, show_default=True,
              help="Prior sampling temperature (0 = greedy).")
@click.option("--top-k", type=IntRange(min=0), default=0, show_default=True, help="Keep the k most likely codes (0 = all).")
@click.option("--prior", type=click.Choice(PRIORS), default="cache", show_default=True,
              help="Prior graph: cache (KV-cache step) or recompute (baseline).")
# where: backend and resources
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto, ort (ONNX Runtime) or trt (TensorRT).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Denoiser graph: fp32, fp16 (mixed) or auto (fp16 on TensorRT, fp32 otherwise).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True, help="ONNX Runtime device.")
@click.option("--threads", type=IntRange(1, CORES), default=None,
              help=f"ONNX Runtime intra-op threads (1..{CORES}; default: all cores, or the free ones on a busy machine).")
@click.option("--spin", type=click.Choice(SPIN), default="auto", show_default=True,
              help="Idle ONNX Runtime threads spin (fastest alone) or sleep (kind to other processes); auto "
                   "decides from the machine's load at start. See timing.json's cpu_policy.")
@click.option("--batch", type=IntRange(min=1), default=None,
              help="Samples per batch, memory / speed only (default: 32, or the bundle's maximum if smaller).")
# output
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: 'samples' beside the bundle).")
@click.option("--quiet", is_flag=True, help="No progress bar; print only the summary line.")
def command(bundle, n, seed, class_, shard, nfe, solver, schedule, steps, churn, guidance, temperature, top_k, prior,
            backend, precision, device, threads, spin, batch, out, quiet):
    """Sample from a DisCo-Diff bundle without torch: prior tokens, then the probability-flow ODE.

    Writes to --out: {seed:06d}.png per sample (.npy for vectors), grid.png (scatter.png for vectors),
    samples.npz (x, tokens, labels, seeds) and timing.json (prior, ODE, total, per function evaluation).
    """
    if seed + n > MAX_SEED:
        raise UserError(f"--seed {seed} + --n {n} exceeds {MAX_SEED}; use a smaller seed")
    out = out or Path(bundle).parent / "samples"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")

    from discodiff.runtime.manifest import Manifest
    from discodiff.runtime.pipeline import Pipeline

    manifest = Manifest.load(bundle)
    try:   # checked before any session is made
        p = resolve_plan(manifest.meta, manifest.sampling, solver=solver, schedule=schedule, steps=steps, nfe=nfe, bundle=str(bundle))
    except PlanError as e:
        raise UserError(f"{e} (--solver/--schedule/--steps/--nfe)") from None
    if churn > 0 and p.solver not in ("heun", "euler"):
        raise UserError(f"--churn works with the heun and euler solvers only (this run uses {p.solver}); drop --churn "
                        "or pass --solver heun")
    if top_k > manifest.meta.k:
        raise UserError(f"--top-k {top_k} is above the model's {manifest.meta.k} codes; use 0 (all) to {manifest.meta.k}")
    label = parse_class(class_, manifest.meta.num_classes, manifest.class_names)
    batch = batch or min(32, manifest.sampling_batch_max)
    if batch > manifest.sampling_batch_max:
        raise UserError(f"--batch {batch} is above the bundle's maximum {manifest.sampling_batch_max}; lower it or "
                        "re-export with a larger --max-batch")
    seeds = shard_seeds(seed, n, shard)
    if len(seeds) == 0:  # more shards than samples: this shard's share of the union is empty
        click.echo(f"shard {shard[0]}/{shard[1]} of {n} samples is empty; nothing to write")
        return
    if p.note and not quiet:   # after every check: a refused run prints its one error line only
        click.echo(p.note, err=True)
    options = dict(nfe=nfe, steps=steps, solver=solver, schedule=schedule, guidance=guidance, churn=churn,
                   temperature=temperature, top_k=top_k, class_label=label, batch=batch)
    with Pipeline.open(bundle, backend=backend, precision=precision, device=device, threads=threads, spin=spin,
                       prior=prior, manifest=manifest) as pipe:
        _sample(pipe, p, seeds, out, shard, quiet, options)


def _sample(pipe, p, seeds, out, shard, quiet, options: dict) -> None:
    """Stream the pipeline's batches into --out; a failure (a non-finite sample included) writes nothing."""
    from tqdm import tqdm

    from discodiff.runtime.output import RunWriter

    meta, backend = pipe.meta, pipe.backend
    prior_s = ode_s = 0.0
    with RunWriter(out, len(seeds), meta.data_shape, meta.m, shard) as writer:
        with tqdm(total=len(seeds) * p.steps, disable=quiet, unit="step", dynamic_ncols=True,
                  desc=f"sampling {len(seeds)} ({backend.name}, {p.solver} on {p.schedule}, {p.nfe} calls)") as bar:
            t_start = time.perf_counter()
            for s in pipe.stream(seeds, callback=lambda i, x: bar.update(len(x)), **options):
                writer.add(s.seeds, s.x, s.tokens, s.labels)
                prior_s, ode_s = prior_s + s.timing["prior_s"], ode_s + s.timing["ode_s"]
            total = time.perf_counter() - t_start
        calls = pipe.calls()
        summary = {"samples": len(seeds), "seeds": [int(seeds[0]), int(seeds[-1])],
                   "shard": list(shard) if shard else None, "backend": backend.name, "denoiser_graph": pipe.denoiser,
                   **p.describe(), **({"note": p.note} if p.note else {}), "denoiser_calls": calls,
                   "guidance": options["guidance"], "churn": options["churn"],
                   "prior": "recompute" if pipe.recompute_prior else "cache", "batch": options["batch"],
                   "prior_s": prior_s, "ode_s": ode_s, "total_s": total,
                   "per_nfe_ms": 1000 * ode_s / max(calls, 1), "graphs": backend.summary(), **pipe.cpu.describe()}
        picture = writer.finish(summary)
    click.echo(f"{len(seeds)} samples in {total:.2f} s (prior {summary['prior_s']:.3f} s, ODE {summary['ode_s']:.2f} s, "
               f"{summary['nfe_per_sample']} denoiser calls per sample, {summary['per_nfe_ms']:.1f} ms per call) "
               f"with {backend.name} -> {out}; see {picture}")


main = main_for(command, "discodiff-run")

if __name__ == "__main__":
    sys.exit(run(command, prog="discodiff-run"))
