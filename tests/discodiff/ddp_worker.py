"""Run under torchrun by tests/test_ddp.py: train toy8-tiny with `discodiff.train.loop.train` in every
rank, then save THIS rank's final weights to <ranks_dir>/rank<r>.safetensors.

`train` keeps its networks to itself, so the worker records them as they are made: it swaps
`loop.DisCoDiff` for a subclass that remembers its instance (the raw weights: denoiser, encoder, prior)
and wraps `loop.ema_update` to remember the EMA modules it updates. Both are the real classes and
functions, only observed.

    torchrun --nproc_per_node 2 tests/discodiff/ddp_worker.py OUT RANKS_DIR STEPS PRIOR_STEPS
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from discodiff import presets
from discodiff.config import replace, to_dict
from discodiff.train import dist as dist_mod
from discodiff.train import loop

made: list[torch.nn.Module] = []
ema_modules: dict[int, tuple[str, torch.nn.Module]] = {}


class RecordedDisCoDiff(loop.DisCoDiff):
    def __init__(self, cfg):
        super().__init__(cfg)
        made.append(self)


_ema_update = loop.ema_update


def recorded_ema_update(ema, net, step, halflife):
    name = "denoiser" if net is made[0].denoiser else "encoder" if net is made[0].encoder else "?"
    ema_modules[id(ema)] = (name, ema)
    return _ema_update(ema, net, step, halflife)


def main() -> None:
    out, ranks_dir, steps, prior_steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    loop.DisCoDiff = RecordedDisCoDiff
    loop.ema_update = recorded_ema_update
    spec, cfg, tc = presets.get("toy8-tiny")
    tc = replace(tc, steps=steps, prior_steps=prior_steps)
    ds = presets.preset_dataset(spec)
    d = dist_mod.init("cpu")
    assert d.enabled and d.world == 2, d
    try:
        options = {"name": "toy8-tiny", "preset": "toy8-tiny", "data": to_dict(spec), "model": to_dict(cfg),
                   "train": to_dict(tc), "command": sys.argv}
        loop.train(out, ds, cfg, tc, d, options, progress=False)
        assert len(made) == 1, len(made)
        tensors = {f"raw.{k}": v.detach().cpu().contiguous().clone() for k, v in made[0].state_dict().items()}
        names = sorted(name for name, _ in ema_modules.values())
        assert names == ["denoiser", "encoder"], names
        for name, module in ema_modules.values():
            tensors.update({f"ema.{name}.{k}": v.detach().cpu().contiguous().clone()
                            for k, v in module.state_dict().items()})
        ranks_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(ranks_dir / f"rank{d.rank}.safetensors"))
    finally:
        dist_mod.shutdown(d)


if __name__ == "__main__":
    main()
