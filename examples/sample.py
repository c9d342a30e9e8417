"""Sample a bundle from Python with the torch-free runtime and save a grid of the images.

    python examples/sample.py                                   # runs/shapes/bundle, after the README's demo
    python examples/sample.py --bundle runs/toy8/bundle --n 64 --nfe 10

The README's "Python" section is the same object in ten lines; tests/runtime/test_examples.py runs both.
"""
import argparse

from discodiff.runtime import Pipeline
from discodiff.runtime.images import save_grid, save_scatter

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--bundle", default="runs/shapes/bundle")
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--nfe", type=int, default=8, help="denoiser calls per sample (the best measured setting)")
ap.add_argument("--out", default="example.png")
a = ap.parse_args()

with Pipeline.open(a.bundle) as pipe:
    out = pipe(range(a.n), nfe=a.nfe)               # Samples: x, tokens, labels, seeds, images, timing, plan
    print(f"{len(out)} samples with {out.plan.solver} on {out.plan.schedule} levels ({out.plan.nfe} calls) "
          f"in {out.timing['total_s']:.2f} s; tokens of the first: {out.tokens[0].tolist()}")
    if out.images is not None:                     # image models: uint8 [n, H, W, 3], the PNGs discodiff-run writes
        save_grid(a.out, out.x)
    else:                                          # vector models: a scatter plot coloured by the first token
        save_scatter(a.out, out.x, colour=out.tokens[:, 0] if out.tokens.shape[1] else None)
    print(f"wrote {a.out}")
