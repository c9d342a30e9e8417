"""Training plots: the loss curve from metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from discodiff.atomic import atomic_savefig
from discodiff.train.metrics import read_metrics


def save_loss_curve(metrics_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for ax, stage, title in ((axes[0], 1, "stage 1: denoiser + encoder (EDM loss)"),
                             (axes[1], 2, "stage 2: prior (cross-entropy, nats)")):
        pts = [(r["step"], r["loss"]) for r in rows if r.get("stage") == stage and "loss" in r]
        if pts:
            s, l = np.array(pts).T
            ax.plot(s, l, lw=1)
            if stage == 1:
                ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    usage = [(r["step"], r["codes_used"]) for r in rows if r.get("stage") == 1 and "codes_used" in r]
    if usage:
        ax2 = axes[0].twinx()
        s, u = np.array(usage).T
        ax2.plot(s, u, color="tab:orange", lw=1, alpha=0.7)
        ax2.set_ylabel("codes in use (per latent, mean)", color="tab:orange")
    fig.tight_layout()
    atomic_savefig(fig, out)
    plt.close(fig)
