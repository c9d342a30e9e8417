"""A second heavy process for the shared-core rows of benchmarks/latency.py: the default shapes
training step (forward, backward, fused Adam) in a loop under discodiff-train's thread policy
(discodiff/train/threads.py: the free cores at start, kept; or --share-cores, re-decided between steps),
as a training run next to a sampler would be. Until SIGTERM; then writes its step timeline to --json.

    python benchmarks/heavy.py --json out.json [--share-cores]
"""
from __future__ import annotations

import argparse
import json
import signal
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--share-cores", action="store_true", help="as discodiff-train --share-cores")
    a = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    from discodiff import presets
    from discodiff.losses import sample_sigma
    from discodiff.networks import DisCoDiff
    from discodiff.train.loop import Stage1, step_generator
    from discodiff.train.threads import choose

    policy = choose(None, a.share_cores).apply()

    _, cfg, _ = presets.get("shapes")
    torch.manual_seed(0)
    s1 = Stage1(DisCoDiff(cfg))
    opt = torch.optim.Adam(s1.parameters(), lr=1e-3, fused=True)
    x = torch.randn(2048, *cfg.data_shape) * 0.5
    y = torch.randint(cfg.num_classes, (2048,))
    times = [time.time()]
    step = 0
    while not stop:
        gen = step_generator(0, 1, 0, step, "cpu")
        idx = torch.randint(2048, (64,), generator=gen)
        loss, _ = s1(x[idx], y[idx], sample_sigma(64, -1.2, 1.2, gen), torch.randn(64, *cfg.data_shape, generator=gen),
                     gen, 1.0, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        times.append(time.time())
        policy.between_steps()
    with open(a.json, "w") as f:
        json.dump({"step_times": times}, f)


if __name__ == "__main__":
    main()
