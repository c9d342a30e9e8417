"""The image half of benchmarks/quality.py: DisCo-Diff against the plain model on `shapes`, where the
true discrete factors (shape = class label, colour = unlabelled) are known.

The classifier of benchmarks/classifier.py (12 classes: shape x colour) labels generated samples.
Reported per model and NFE: label histogram against the data's (total variation), mean classifier
confidence, class adherence (predicted shape = requested class), colour balance; for DisCo-Diff the
normalised mutual information between its tokens and the true colour and shape (on real images
through the encoder, and on generated images through the classifier).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from discodiff.benchmarks import quality_metrics as qm
from discodiff.benchmarks.classifier import N_COLOURS, classify, train_classifier
from discodiff.benchmarks.common import Results
from discodiff.data import shapes
from discodiff.runtime.draws import draw
from discodiff.runtime.images import grid, to_uint8, write_png
from discodiff.sampling import model_meta, sample


def joint_tokens(tokens: np.ndarray, k: int) -> np.ndarray:
    return (tokens * (k ** np.arange(tokens.shape[1]))).sum(1)


def run_shapes(a, train_or_load, log, results: Results) -> dict:
    quick = a.quick
    preset = "shapes-tiny" if quick else "shapes"
    work = a.work / ("shapes-quick" if quick else "shapes")
    disco_ckpt = a.shapes_disco
    default = Path("runs/shapes/model.safetensors")
    if disco_ckpt is None and not quick and default.exists():
        disco_ckpt = default  # the default training run is the DisCo-Diff model
    t0 = time.time()
    models = {"disco": train_or_load(disco_ckpt, work, "disco", preset, presets_m(preset), a.shapes_steps),
              "plain": train_or_load(a.shapes_plain, work, "plain", preset, 0, a.shapes_steps)}
    cfg = models["disco"].cfg
    res_px = cfg.data_shape[1]
    clf, acc = train_classifier(res_px, 2000 if quick else 12000, 60 if quick else 600, log)
    n = 64 if quick else 512
    steps_grid = (3, 5) if quick else (5, 10, 18)
    real = shapes(2000, res_px, seed=789)
    real_labels = real.factors["shape"] * N_COLOURS + real.factors["colour"]
    out = {"classifier_accuracy": acc, "n": n, "rows": []}
    for name, model in models.items():
        d = draw(np.arange(n) + 900_000, model_meta(model.cfg))
        for steps in steps_grid:
            s = sample(model, draws=d, steps=steps)
            pred, conf = classify(clf, s.x)
            row = {"model": name, "steps": steps, "nfe": 2 * steps - 1,
                   "label_tv_vs_data": qm.histogram_tv(pred, real_labels, 3 * N_COLOURS),
                   "confidence": float(conf.mean()),
                   "class_adherence": float(np.mean(pred // N_COLOURS == d.labels)),
                   "colour_tv_vs_uniform": qm.histogram_tv(pred % N_COLOURS, np.arange(N_COLOURS), N_COLOURS)}
            if model.cfg.m:
                row["nmi_tokens_colour_generated"] = qm.nmi(joint_tokens(s.tokens, model.cfg.k), pred % N_COLOURS)
            out["rows"].append(row)
            log(f"  {name:6s} NFE {row['nfe']:3d}: label TV {row['label_tv_vs_data']:.3f}, confidence "
                f"{row['confidence']:.3f}, class adherence {row['class_adherence']:.3f}")
    disco = models["disco"]
    with torch.no_grad():
        tok = disco.encoder(torch.from_numpy(real.x)).argmax(-1).numpy()
    jt = joint_tokens(tok, disco.cfg.k)
    out["disco_tokens_on_real"] = {
        "nmi_colour": qm.nmi(jt, real.factors["colour"]), "nmi_shape": qm.nmi(jt, real.factors["shape"]),
        "codes_used_per_latent": [int(len(np.unique(tok[:, j]))) for j in range(tok.shape[1])],
        "joint_codes_used": int(len(np.unique(jt)))}
    log(f"  DisCo tokens on real images: NMI with colour {out['disco_tokens_on_real']['nmi_colour']:.3f}, "
        f"with shape {out['disco_tokens_on_real']['nmi_shape']:.3f}")
    variant = "shapes" + ("-quick" if quick else "")
    save_grids(models, results.path("png", f"{variant}-grids"), steps_grid, cfg)
    out["seconds"] = time.time() - t0
    path = results.write(out, variant=variant, indent=2)
    log(f"wrote {path} and {results.path('png', f'{variant}-grids').name}")
    return out


def presets_m(preset: str) -> int:
    from discodiff import presets

    return presets.get(preset)[1].m


def save_grids(models: dict, path: Path, steps_grid, cfg) -> None:
    """Rows: each model at each NFE, the same 12 seeds and classes (so columns compare)."""
    d = draw(np.arange(12) + 950_000, model_meta(cfg))   # labels depend on the seeds and classes only
    rows = []
    for name, model in models.items():
        dm = draw(np.arange(12) + 950_000, model_meta(model.cfg))
        dm.labels = d.labels
        for steps in steps_grid:
            rows.append(sample(model, draws=dm, steps=steps).x)
    imgs = to_uint8(np.concatenate(rows))
    write_png(path, grid(imgs, cols=12, scale=max(1, 32 // cfg.data_shape[1]) * 2))
