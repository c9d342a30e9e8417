"""Writing samples: PNGs, image grids (opencv) and scatter plots for vectors (matplotlib, lazily).

Torch-free; the training code uses these too. Every file is written atomically (temp name, then rename).
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from discodiff.atomic import atomic_write


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] RGB."""
    return np.clip((x.transpose(0, 2, 3, 1) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """uint8 [H, W, 3] RGB -> PNG."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


def grid(images: np.ndarray, cols: int | None = None, scale: int = 1, pad: int = 1) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one uint8 grid image, `scale`x nearest-upsampled, padded in grey."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 64, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    if scale > 1:
        out = cv2.resize(out, (out.shape[1] * scale, out.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    return out


def save_grid(path: Path, x: np.ndarray, cols: int | None = None) -> None:
    """float [N, 3, H, W] in [-1, 1] -> grid PNG about 512 pixels wide."""
    imgs = to_uint8(x)
    cols = cols or math.ceil(math.sqrt(len(imgs)))
    scale = max(1, 512 // (cols * (imgs.shape[2] + 1)))
    write_png(path, grid(imgs, cols, scale))


def save_scatter(path: Path, x: np.ndarray, colour: np.ndarray | None = None, title: str = "",
                 reference: np.ndarray | None = None) -> None:
    """Vectors [N, D] -> scatter of the first two dimensions; `colour` e.g. the latent token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgrey", label="data")
    ys = x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))
    if colour is not None:
        sc = ax.scatter(x[:, 0], ys, s=2, c=colour, cmap="tab10")
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label="latent token")
    else:
        ax.scatter(x[:, 0], ys, s=2, c="tab:blue")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
