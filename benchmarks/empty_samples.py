"""How often does a model draw an empty (all-background) image, and why? The README demo's 32 samples held
one black image; this measures the rate on many seeds and tests the three usual suspects:

  * a code the prior draws that the encoder rarely produced on the training data (rare (label, tokens));
  * the guidance-free null path (only used with --guidance != 1; this runs without guidance, as the demo);
  * the sampler (the same seeds with the fitted 8-call schedule and with Heun on 18 levels, 35 calls).

For each empty sample it then keeps the seed's noise and varies label and first token, and keeps label
and tokens and varies the noise: an empty image that follows the noise, not the code, is the model's own
rate of such samples, not a bug of the toolkit.

    python benchmarks/empty_samples.py --bundle runs/shapes/bundle --n 2000

Writes benchmarks/results/empty-samples-<machine>.{json,txt}. Needs a bundle of the `shapes` preset.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

from discodiff.benchmarks.common import Results, add_options, machine_name, sample_draws
from discodiff.presets import get, preset_dataset
from discodiff.runtime import Pipeline
from discodiff.runtime.draws import draw
from discodiff.runtime.images import to_uint8

EMPTY_MAX = 60      # uint8: no pixel brighter than this is an empty image (shapes are drawn at >= 200 in some channel)
BATCH = 32


def empty(x: np.ndarray) -> np.ndarray:
    """bool [B]: images of x (float32 [B, 3, H, W] in [-1, 1]) with no pixel above EMPTY_MAX."""
    return to_uint8(x).reshape(len(x), -1).max(axis=1) <= EMPTY_MAX


def encoder_combos(pipe: Pipeline, ds) -> collections.Counter:
    """How many training images the encoder gives each (label, tokens)."""
    tokens = [pipe.backend.run("encoder", {"x": ds.x[i:i + BATCH].astype(np.float32)})["logits"].argmax(-1)
              for i in range(0, len(ds.x), BATCH)]
    return collections.Counter(zip(ds.labels.tolist(), map(tuple, np.concatenate(tokens).tolist())))


def sample_all(pipe: Pipeline, p, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, tokens, flags = [], [], []
    batch = min(BATCH, pipe.batch_max)
    for part in pipe.stream(np.arange(n), solver=p.solver, sigmas=p.sigmas, batch=batch, nonfinite="keep"):
        labels.append(part.labels), tokens.append(part.tokens), flags.append(empty(part.x))
    return np.concatenate(labels), np.concatenate(tokens), np.concatenate(flags)


def probe(pipe: Pipeline, p, seed: int, label: int, tokens: np.ndarray, others: int) -> dict:
    """Seed's noise with every label x first token; the seed's label and tokens with `others` other noises."""
    meta = pipe.meta
    levels = dict(solver=p.solver, sigmas=p.sigmas)
    d = draw(np.array([seed]), meta)
    same_noise = 0
    for lab in range(meta.num_classes):
        for t0 in range(meta.k):
            d.labels = np.array([lab], np.int32)
            tok = tokens.copy()[None]
            tok[0, 0] = t0
            same_noise += int(empty(sample_draws(pipe, d, **levels, tokens=tok).x)[0])
    seeds = np.arange(10**6, 10**6 + others)
    d = draw(seeds, meta)
    d.labels = np.full(others, label, np.int32)
    x = sample_draws(pipe, d, **levels, tokens=np.repeat(tokens[None], others, 0)).x
    return {"seed": seed, "label": label, "tokens": tokens.tolist(),
            "same_noise_empty": same_noise, "same_noise_tried": meta.num_classes * meta.k,
            "same_code_empty": int(empty(x).sum()), "same_code_tried": others}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/shapes/bundle"))
    ap.add_argument("--n", type=int, default=2000)
    add_options(ap)
    a = ap.parse_args()
    spec, _, _ = get("shapes")
    ds = preset_dataset(spec)
    res: dict = {"machine": a.machine or machine_name(), "bundle": str(a.bundle), "n": a.n,
                 "empty_max_uint8": EMPTY_MAX,
                 "training_images_empty": int(empty(ds.x).sum()), "training_images": len(ds.x)}
    # every core, spinning: the machine is this benchmark's alone
    with Pipeline.open(a.bundle, backend="ort", spin="on", graphs=("denoiser", "encoder", "prior_step")) as pipe:
        train = encoder_combos(pipe, ds)
        runs = {"fitted-8": pipe.plan(nfe=8), "heun-35": pipe.plan(solver="heun", steps=18)}
        sampled = {name: sample_all(pipe, p, a.n) for name, p in runs.items()}
        labels, tokens, flags = sampled["fitted-8"]
        res["empty"] = {name: {"count": int(f.sum()), "rate": float(f.mean()), "seeds": np.flatnonzero(f).tolist()}
                        for name, (_, _, f) in sampled.items()}
        combos = [(int(lab), tuple(t)) for lab, t in zip(labels.tolist(), tokens.tolist())]
        rare = np.array([train.get(c, 0) < len(ds.x) / 1000 for c in combos])
        res["rare_codes"] = {"threshold": "encoder gave it to < 0.1 % of the training images",
                             "samples": int(rare.sum()), "empty_among_them": int(flags[rare].sum()),
                             "empty_among_the_rest": int(flags[~rare].sum())}
        res["probes"] = [{**probe(pipe, runs["fitted-8"], int(s), combos[s][0], tokens[s], 64),
                          "training_images_with_this_code": train.get(combos[s], 0)} for s in np.flatnonzero(flags)]
    lines = [f"empty samples (no pixel > {EMPTY_MAX}) on {a.bundle}, n = {a.n} seeds, no guidance ({res['machine']})",
             f"training images that are empty: {res['training_images_empty']} of {res['training_images']}"]
    lines += [f"{name}: {e['count']} empty ({100 * e['rate']:.2f} %), seeds {e['seeds'][:20]}" for name, e in res["empty"].items()]
    r = res["rare_codes"]
    lines.append(f"samples with a rare code ({r['threshold']}): {r['samples']}, empty {r['empty_among_them']}; "
                 f"empty among the rest: {r['empty_among_the_rest']}")
    for p in res["probes"]:
        lines.append(f"seed {p['seed']} (label {p['label']}, tokens {p['tokens']}, a code of "
                     f"{p['training_images_with_this_code']} training images): its noise with every label x first "
                     f"token empty {p['same_noise_empty']}/{p['same_noise_tried']}; its code with other noises empty "
                     f"{p['same_code_empty']}/{p['same_code_tried']}")
    Results(a.out_dir, "empty-samples", res["machine"]).publish(res, "\n".join(lines), indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
