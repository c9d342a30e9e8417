"""Sample-quality measures for benchmarks/quality.py (numpy / scipy; the image classifier uses torch).

- `w2`: 2-Wasserstein distance between two equal-size point sets by exact optimal assignment;
- `excess`: sqrt(max(W2^2 - floor^2, 0)), the part of W2 not explained by finite-sample noise;
- `off_mode_share`, `mode_tv`: mass between the mixture's modes, and how evenly the modes are hit;
- `purity`, `code_shares`: how cleanly each latent code maps to one mixture component;
- `curvature`: unit-tangent change per unit path length along ODE trajectories (Xu et al. 2024, Fig. 3);
- `nmi`: normalised mutual information between two discrete labelings;
- `frechet`: Frechet distance between Gaussians fitted to two feature sets (FID's formula, here on the
  features of a classifier trained on the data set: FD_cls).
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import sqrtm
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def w2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 between equal-size empirical measures [n, d]: optimal one-to-one assignment."""
    if len(a) != len(b):
        raise ValueError("w2 needs point sets of equal size")
    cost = cdist(a.astype(np.float64), b.astype(np.float64), "sqeuclidean")
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


def excess(w: float, floor: float) -> float:
    return float(np.sqrt(max(w**2 - floor**2, 0.0)))


def nearest(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and distance to the nearest centre, for each point."""
    d = cdist(x, centres)
    idx = d.argmin(1)
    return idx, d[np.arange(len(x)), idx]


def off_mode_share(x: np.ndarray, centres: np.ndarray, radius: float) -> float:
    """Share of points farther than `radius` from every centre."""
    return float(np.mean(nearest(x, centres)[1] > radius))


def mode_tv(x: np.ndarray, centres: np.ndarray) -> float:
    """Total variation between the nearest-centre histogram and uniform."""
    h = np.bincount(nearest(x, centres)[0], minlength=len(centres)) / len(x)
    return float(0.5 * np.abs(h - 1 / len(centres)).sum())


def code_shares(tokens: np.ndarray, k: int) -> list[float]:
    return (np.bincount(tokens, minlength=k) / len(tokens)).tolist()


def purity(tokens: np.ndarray, component: np.ndarray) -> float:
    """Share of samples whose component is the majority component of their code."""
    total = 0
    for c in np.unique(tokens):
        total += np.bincount(component[tokens == c]).max()
    return float(total / len(tokens))


def curvature(traj: np.ndarray) -> np.ndarray:
    """traj [T+1, n, d] (states along the solve) -> mean curvature per interior step [T-1]:
    |t_{i+1} - t_i| / (mean segment length), t_i the unit tangent of segment i."""
    seg = np.diff(traj.astype(np.float64), axis=0)                   # [T, n, d]
    length = np.linalg.norm(seg, axis=-1)                            # [T, n]
    unit = seg / np.maximum(length[..., None], 1e-12)
    turn = np.linalg.norm(np.diff(unit, axis=0), axis=-1)            # [T-1, n]
    ds = 0.5 * (length[1:] + length[:-1])
    return (turn / np.maximum(ds, 1e-12)).mean(axis=1)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information I(a;b) / sqrt(H(a) H(b)) of two integer labelings."""
    a, b = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / (pa[:, None] * pb[None, :])[nz])).sum())
    ha, hb = -(pa[pa > 0] * np.log(pa[pa > 0])).sum(), -(pb[pb > 0] * np.log(pb[pb > 0])).sum()
    return mi / np.sqrt(ha * hb) if ha > 0 and hb > 0 else 0.0


def histogram_tv(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Total variation between the label histograms of a and b over k classes."""
    ha, hb = np.bincount(a, minlength=k) / len(a), np.bincount(b, minlength=k) / len(b)
    return float(0.5 * np.abs(ha - hb).sum())


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of feature sets a [n, d], b [m, d]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrtm(s_a @ s_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root))


def matched_reference(x: np.ndarray, centres: np.ndarray, std: float, seed: int) -> np.ndarray:
    """A mixture reference redrawn with x's own per-component counts (each point's nearest centre): W2
    against it drops the multinomial count noise that dominates W2 at a few thousand points."""
    return centres[nearest(x, centres)[0]] + std * np.random.default_rng(seed).standard_normal(x.shape)
