"""Sample pictures written during and after training.

- during stage 1 (no prior yet): samples whose latents come from the EMA encoder of real examples,
  next to those examples, to show what the latents carry: `samples/step-XXXXXX.png`;
- at the end: `samples.png`, drawn with the reference sampler through the prior. For images a grid
  with one row per class (when conditional); for vectors a scatter coloured by latent token.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from discodiff.data import Dataset
from discodiff.networks import DisCoDiff
from discodiff.runtime.draws import draw
from discodiff.runtime.images import save_grid, save_scatter
from discodiff.sampling import model_meta, sample

GRID_SEEDS = 64
SCATTER_SEEDS = 2000


@torch.no_grad()
def save_progress_samples(model: DisCoDiff, ds: Dataset, out: Path, step: int, device: torch.device) -> None:
    n = 32 if ds.is_image else SCATTER_SEEDS
    idx = np.random.default_rng(0).choice(len(ds), size=min(n, len(ds)), replace=False)
    real = torch.from_numpy(ds.x[idx]).to(device)
    model.eval()
    tokens = model.encoder(real).argmax(-1).int().cpu().numpy() if model.encoder is not None else None
    d = draw(np.arange(len(idx)), model_meta(model.cfg))
    if ds.labels is not None:
        d.labels = ds.labels[idx].astype(np.int32)
    s = sample(model, draws=d, tokens=tokens, steps=18, device=device)
    path = out / "samples" / f"step-{step:06d}.png"
    if ds.is_image:  # rows alternate: real examples, then samples sharing their latents and labels
        rows = [arr for i in range(0, len(idx), 8) for arr in (ds.x[idx][i:i + 8], s.x[i:i + 8])]
        save_grid(path, np.concatenate(rows), cols=8)
    else:
        save_scatter(path, s.x, colour=tokens[:, 0] if tokens is not None else None,
                     title=f"step {step}: samples with encoder latents", reference=ds.x[idx])


@torch.no_grad()
def save_final_samples(model: DisCoDiff, ds: Dataset, out: Path, device: torch.device) -> None:
    cfg = model.cfg
    if ds.is_image:
        per_row = 8
        if cfg.num_classes:  # one row per class, cycling through classes for 8 rows
            rows = max(8 // cfg.num_classes, 1) * cfg.num_classes
            seeds = np.arange(rows * per_row)
            d = draw(seeds, model_meta(cfg))
            d.labels = np.repeat(np.arange(rows) % cfg.num_classes, per_row).astype(np.int32)
            s = sample(model, draws=d, device=device)
        else:
            s = sample(model, np.arange(GRID_SEEDS), device=device)
        save_grid(out / "samples.png", s.x, cols=per_row)
    else:
        s = sample(model, np.arange(SCATTER_SEEDS), device=device, batch=1000)
        ref = ds.x[np.random.default_rng(0).choice(len(ds), size=min(SCATTER_SEEDS, len(ds)), replace=False)]
        save_scatter(out / "samples.png", s.x, colour=s.tokens[:, 0] if cfg.m else None,
                     title=f"{SCATTER_SEEDS} samples (Heun, 35 NFE)" + (", colour = latent token" if cfg.m else ""),
                     reference=ref)
