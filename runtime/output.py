"""Writing a run's results into --out without ever leaving half of it.

Everything is written into a temporary directory inside --out first, then each file is moved into
place; a failure removes the temporary directory and leaves --out as it was. Files of other runs in
--out are kept; a file of the same name (same seed) is replaced.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .images import save_grid, save_scatter, to_uint8, write_png


def shard_suffix(shard: tuple[int, int] | None) -> str:
    return "" if shard is None or shard[1] == 1 else f"-shard{shard[0]}of{shard[1]}"


def write_run(out: Path, x: np.ndarray, tokens: np.ndarray, labels: np.ndarray, seeds: np.ndarray,
              summary: dict, shard: tuple[int, int] | None = None, is_image: bool = True) -> list[Path]:
    """Per-sample files `{seed:06d}.png|.npy`, a grid (images) or scatter (vectors), samples.npz and
    timing.json (shard-level files carry a -shard{i}of{N} suffix). Returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".discodiff-run-", dir=out))
    suffix = shard_suffix(shard)
    try:
        names = []
        if is_image:
            u8 = to_uint8(x)
            for s, img in zip(seeds, u8):
                write_png(tmp / f"{s:06d}.png", img)
                names.append(f"{s:06d}.png")
            save_grid(tmp / f"grid{suffix}.png", x[:256])
            names.append(f"grid{suffix}.png")
        else:
            for s, v in zip(seeds, x):
                np.save(tmp / f"{s:06d}.npy", v)
                names.append(f"{s:06d}.npy")
            save_scatter(tmp / f"scatter{suffix}.png", x, colour=tokens[:, 0] if tokens.shape[1] else None,
                         title=f"{len(x)} samples")
            names.append(f"scatter{suffix}.png")
        buf = io.BytesIO()
        np.savez(buf, x=x, tokens=tokens, labels=labels, seeds=seeds)
        (tmp / f"samples{suffix}.npz").write_bytes(buf.getvalue())
        (tmp / f"timing{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
        names += [f"samples{suffix}.npz", f"timing{suffix}.json"]
        for n in names:
            os.replace(tmp / n, out / n)
        return [out / n for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
