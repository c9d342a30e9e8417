"""Writing a run's results into --out as they are made, without ever leaving half of it.

`RunWriter` makes a hidden temp directory inside --out before sampling starts (so an unwritable --out
fails at once), streams each batch into it (per-sample files, and the rows of samples.npz into one
.npy part per array), then assembles samples.npz from the parts, writes the grid or scatter and
timing.json, and moves everything into place. Memory stays flat in the number of samples: only the
first GRID_MAX images / SCATTER_MAX points are kept, for the picture. Any failure removes the temp
directory and leaves --out as it was; temp directories of killed runs are reclaimed by the next one.
Files of other runs in --out are kept; a file of the same name (same seed) is replaced.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from discodiff.atomic import reclaim, temp_dir
from discodiff.runtime.images import save_grid, save_scatter, to_uint8, write_png

TEMP_PREFIX = ".discodiff-run-"
GRID_MAX = 256          # images in grid.png
SCATTER_MAX = 20_000    # points in scatter.png


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """"-shard{i}of{N}" for shard (i, N) of several, "" otherwise: shards write side by side into one --out."""
    return "" if shard is None or shard[1] == 1 else f"-shard{shard[0]}of{shard[1]}"


class _NpyPart:
    """An .npy file written row block by row block, its header giving the final row count."""

    def __init__(self, path: Path, rows: int, row_shape: tuple[int, ...], dtype):
        self.path, self.left = path, rows
        self.f = open(path, "wb")
        np.lib.format.write_array_header_2_0(self.f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                      "fortran_order": False, "shape": (rows, *row_shape)})
        self.dtype = np.dtype(dtype)

    def write(self, block: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(block, self.dtype).tobytes())
        self.left -= len(block)

    def close(self) -> None:
        self.f.close()


class RunWriter:
    """The outputs of one `discodiff-run`, streamed into a temp directory inside `out` and moved into
    `out` by `finish`; a context manager that removes everything on an error. Writes nowhere but `out`.

    Args:
        out: the --out directory (made if missing; removed again on failure if this run made it).
        n: the number of samples that will be added (the npz arrays' row count, fixed up front).
        data_shape, m: a sample's shape and its number of latent tokens.
        shard: (i, N) of a sharded run, which suffixes the shared file names (`shard_suffix`).
    """

    def __init__(self, out: Path, n: int, data_shape: tuple[int, ...], m: int, shard: tuple[int, int] | None = None):
        self.out, self.is_image = Path(out), len(data_shape) == 3
        self.suffix = shard_suffix(shard)
        self.created = not self.out.exists()     # a failed run removes the folder it made, if still empty
        self.out.mkdir(parents=True, exist_ok=True)
        reclaim(self.out, TEMP_PREFIX)
        self.tmp = temp_dir(self.out, TEMP_PREFIX)
        self.parts = {}
        try:
            for name, shape, dtype in (("x", data_shape, np.float32), ("tokens", (m,), np.int32),
                                       ("labels", (), np.int32), ("seeds", (), np.int64)):
                self.parts[name] = _NpyPart(self.tmp / f".part-{name}.npy", n, tuple(shape), dtype)
        except BaseException:
            self.abort()
            raise
        self.kept_x: list[np.ndarray] = []
        self.kept_tokens: list[np.ndarray] = []
        self.kept = 0

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            if isinstance(exc, OSError) and exc.errno is not None and not exc.filename:
                raise OSError(exc.errno, exc.strerror, str(self.out)) from exc   # name the folder being written

    def add(self, seeds: np.ndarray, x: np.ndarray, tokens: np.ndarray, labels: np.ndarray) -> None:
        """One batch: seeds int64 [B], x float32 [B, *data_shape], tokens int32 [B, m], labels int32 [B]
        -> per-sample files (<seed>.png or .npy) and the npz rows."""
        if self.is_image:
            for s, img in zip(seeds, to_uint8(x)):
                write_png(self.tmp / f"{s:06d}.png", img)
        else:
            for s, v in zip(seeds, x):
                np.save(self.tmp / f"{s:06d}.npy", v)
        for name, a in (("x", x), ("tokens", tokens), ("labels", labels), ("seeds", seeds)):
            self.parts[name].write(a)
        room = (GRID_MAX if self.is_image else SCATTER_MAX) - self.kept
        if room > 0:
            self.kept_x.append(x[:room].copy())
            self.kept_tokens.append(tokens[:room].copy())
            self.kept += len(self.kept_x[-1])

    def finish(self, summary: dict) -> Path:
        """Picture, samples.npz and timing.json (`summary`), then everything moved into --out. Returns the
        picture's path (grid.png or scatter.png)."""
        try:
            s = self.suffix
            for part in self.parts.values():
                part.close()
                if part.left != 0:
                    raise RuntimeError(f"{part.path.name}: {part.left} rows were never written")
            x, tokens = np.concatenate(self.kept_x), np.concatenate(self.kept_tokens)
            if self.is_image:
                picture = self.tmp / f"grid{s}.png"
                save_grid(picture, x)
            else:
                picture = self.tmp / f"scatter{s}.png"
                total = summary.get("samples", len(x))
                save_scatter(picture, x, colour=tokens[:, 0] if tokens.shape[1] else None,
                             title=f"{len(x)} samples" + (f" (first {len(x)} of {total})" if total > len(x) else ""))
            with zipfile.ZipFile(self.tmp / f"samples{s}.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, part in self.parts.items():   # streamed from the parts, never all in memory
                    zf.write(part.path, arcname=f"{name}.npy")
                    part.path.unlink()
            (self.tmp / f"timing{s}.json").write_text(json.dumps(summary, indent=2) + "\n")
            with os.scandir(self.tmp) as it:
                for entry in it:
                    os.replace(entry.path, self.out / entry.name)
            return self.out / picture.name
        finally:
            self.abort()

    def abort(self) -> None:
        """Remove the temp directory (and --out if this run made it and it is empty); safe to call twice."""
        for part in self.parts.values():
            with contextlib.suppress(OSError):   # closing flushes; on a full disk that fails too
                part.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created:
            with contextlib.suppress(OSError):   # not empty: the run finished, or someone else writes there
                self.out.rmdir()
