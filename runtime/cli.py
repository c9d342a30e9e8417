"""`discodiff-run`: sample from a bundle with the torch-free runtime, prior first, then the ODE.

    discodiff-run --n 32                      # the default bundle runs/shapes/bundle -> runs/shapes/samples
    discodiff-run --bundle runs/toy8/bundle --n 4000 --solver dpm2m --steps 10
    discodiff-run --n 1000 --shard 0/4        # this machine's quarter; the 4 shards union to the full run

Sample i has seed --seed + i; its draws (class, tokens, noise) come from that seed alone, so files do
not change with --batch, the backend or sharding.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import click
import numpy as np

from ..cli_util import main_for, run
from ..errors import UserError
from .solvers import SOLVERS, nfe

DEFAULT_BUNDLE = Path("runs") / "shapes" / "bundle"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(f"--shard {text!r} is malformed; write i/N with 0 <= i < N, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def shard_seeds(seed: int, n: int, shard: tuple[int, int] | None) -> np.ndarray:
    seeds = np.arange(seed, seed + n, dtype=np.int64)
    return seeds if shard is None else np.array_split(seeds, shard[1])[shard[0]]


def parse_class(value: str | None, manifest: dict) -> int | None:
    if value is None:
        return None
    classes, names = manifest["num_classes"], manifest.get("class_names") or []
    if not classes:
        raise UserError("--class was given but this model is unconditional; drop --class")
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < classes:
        return int(value)
    hint = f" ({', '.join(names)})" if names else ""
    raise UserError(f"--class {value!r} is not a class of this model; use 0..{classes - 1}{hint}")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bundle", type=click.Path(path_type=Path), default=DEFAULT_BUNDLE, show_default=True,
              help="Bundle directory written by discodiff-export.")
@click.option("--n", "n", type=int, default=32, show_default=True, help="Number of samples (seeds --seed .. --seed+n-1).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first sample.")
@click.option("--batch", type=int, default=32, show_default=True, help="Samples per batch (memory / speed only).")
@click.option("--steps", type=int, default=None, help="Noise levels N (default: the bundle's). Heun uses 2N-1 evaluations.")
@click.option("--solver", type=str, default=None, help=f"ODE solver: {', '.join(SOLVERS)} (default: the bundle's).")
@click.option("--churn", type=float, default=0.0, show_default=True, help="EDM stochastic churn S_churn (heun/euler).")
@click.option("--class", "class_", type=str, default=None, help="Class index or name for every sample "
              "(default: drawn per sample from its seed).")
@click.option("--guidance", type=float, default=1.0, show_default=True,
              help="Classifier-free guidance scale over the latents (1 = none).")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Prior sampling temperature (0 = greedy).")
@click.option("--top-k", type=int, default=0, show_default=True, help="Keep the k most likely codes (0 = all).")
@click.option("--prior", type=str, default="cache", show_default=True,
              help="Prior graph: cache (KV-cache step) or recompute (baseline).")
@click.option("--backend", type=str, default="auto", show_default=True, help="auto, ort (ONNX Runtime) or trt (TensorRT).")
@click.option("--precision", type=str, default="auto", show_default=True,
              help="Denoiser graph: fp32, fp16 (mixed) or auto (fp16 on TensorRT, fp32 otherwise).")
@click.option("--device", type=str, default="cpu", show_default=True, help="ONNX Runtime device: cpu or cuda.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--shard", type=str, default=None, help="Produce only shard i of N (i/N, 0-based).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory (default: 'samples' beside the bundle).")
@click.option("--quiet", is_flag=True, help="No progress bar; print only the summary line.")
def command(bundle, n, seed, batch, steps, solver, churn, class_, guidance, temperature, top_k, prior, backend,
            precision, device, threads, shard, out, quiet):
    """Sample from a DisCo-Diff bundle without torch: prior tokens, then the probability-flow ODE.

    Writes to --out: {seed:06d}.png per sample (.npy for vectors), grid.png (scatter.png for vectors),
    samples.npz (x, tokens, labels, seeds) and timing.json (prior, ODE, total, per function evaluation).
    """
    for name, value, low in (("--n", n, 1), ("--batch", batch, 1), ("--steps", steps, 1), ("--seed", seed, 0),
                             ("--top-k", top_k, 0), ("--threads", threads, 1)):
        if value is not None and value < low:
            raise UserError(f"{name} {value} is out of range; it must be >= {low}")
    for name, value, choices in (("--prior", prior, ("cache", "recompute")), ("--device", device, ("cpu", "cuda")),
                                 ("--backend", backend, ("auto", "ort", "trt")),
                                 ("--precision", precision, ("auto", "fp32", "fp16"))):
        if value not in choices:
            raise UserError(f"{name} {value!r} is unknown; choose one of {', '.join(choices)}")
    if solver is not None and solver not in SOLVERS:
        raise UserError(f"--solver {solver!r} is unknown; choose one of {', '.join(SOLVERS)}")
    if churn < 0 or temperature < 0:
        raise UserError("--churn and --temperature must be >= 0")
    shard_t = parse_shard(shard)
    out = out or Path(bundle).parent / "samples"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")

    from .bundle import open_bundle
    from .draws import draw
    from .output import write_run

    opened = open_bundle(bundle, backend, precision, device, threads, prior)
    man, pipe = opened.manifest, opened.pipeline
    solver = solver or man["sampling"]["solver"]
    steps = steps or man["sampling"]["steps"]
    if churn > 0 and solver == "dpm2m":
        opened.backend.close()
        raise UserError("--churn works with the heun and euler solvers only; drop --churn or pass --solver heun")
    label = parse_class(class_, man)
    max_batch = man["graphs"]["denoiser"]["batch"]["max"] // 2
    if batch > max_batch:
        raise UserError(f"--batch {batch} is above the bundle's maximum {max_batch}; lower it or re-export "
                        "with a larger --max-batch")

    seeds = shard_seeds(seed, n, shard_t)
    if len(seeds) == 0:  # more shards than samples: this shard's share of the union is empty
        opened.backend.close()
        click.echo(f"shard {shard_t[0]}/{shard_t[1]} of {n} samples is empty; nothing to write")
        return
    draws = draw(seeds, tuple(man["data_shape"]), man["m"], man["num_classes"], label)
    xs, toks = [], []
    t_prior = t_ode = 0.0
    from tqdm import tqdm

    bar = tqdm(total=len(seeds) * steps, desc=f"sampling {len(seeds)} ({opened.backend.name}, {solver} {steps} steps)",
               disable=quiet, unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    try:
        for start in range(0, len(seeds), batch):
            d = draws.take(slice(start, start + batch))
            t0 = time.perf_counter()
            tok = pipe.tokens(d, temperature, top_k, use_cache=prior == "cache")
            t1 = time.perf_counter()
            x, _ = pipe.sample(d, steps=steps, solver=solver, guidance=guidance, churn=churn, tokens=tok,
                               callback=lambda i, x, b=len(d.seeds): bar.update(b))
            t2 = time.perf_counter()
            t_prior, t_ode = t_prior + t1 - t0, t_ode + t2 - t1
            xs.append(x)
            toks.append(tok)
    finally:
        bar.close()
        opened.backend.close()
    total = time.perf_counter() - t_start
    evals = nfe(solver, steps) * int(np.ceil(len(seeds) / batch))
    summary = {"samples": len(seeds), "seeds": [int(seeds[0]), int(seeds[-1])] if len(seeds) else [],
               "shard": list(shard_t) if shard_t else None, "backend": opened.backend.name,
               "denoiser_graph": opened.denoiser, "solver": solver, "steps": steps, "nfe_per_sample": nfe(solver, steps),
               "guidance": guidance, "churn": churn, "prior": prior, "batch": batch,
               "prior_s": t_prior, "ode_s": t_ode, "total_s": total,
               "per_nfe_ms": 1000 * t_ode / max(evals, 1), "graphs": opened.backend.summary()}
    written = write_run(out, np.concatenate(xs), np.concatenate(toks), draws.labels, seeds, summary, shard_t,
                        is_image=len(man["data_shape"]) == 3)
    grid = next(p for p in written if p.name.startswith(("grid", "scatter")))
    click.echo(f"{len(seeds)} samples in {total:.2f} s (prior {t_prior:.3f} s, ODE {t_ode:.2f} s, "
               f"{summary['per_nfe_ms']:.1f} ms per evaluation) with {opened.backend.name} -> {out}; see {grid}")


main = main_for(command, "discodiff-run")

if __name__ == "__main__":
    sys.exit(run(command, prog="discodiff-run"))
