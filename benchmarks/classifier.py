"""The shapes classifier the image benchmarks judge samples with (quality.py's shapes half, frontier.py's
FD_cls): a small CNN trained here on fresh real images, 12 classes = shape (the class label) x colour
(unlabelled, N_COLOURS). Its penultimate activations are the feature space of FD_cls.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from discodiff.data import shapes

N_COLOURS = 4


class Classifier(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(128), nn.SiLU(),
            nn.Linear(128, classes))

    def forward(self, x):
        return self.net(x)


def train_classifier(res: int, n: int, steps: int, log) -> tuple[Classifier, float]:
    """Shape x colour classifier on fresh real images; returns it and its held-out accuracy."""
    torch.manual_seed(0)
    ds = shapes(n, res, seed=123)
    test = shapes(1000, res, seed=456)
    y = torch.from_numpy(ds.factors["shape"] * N_COLOURS + ds.factors["colour"])
    x = torch.from_numpy(ds.x)
    clf = Classifier(3 * N_COLOURS)
    clf(x[:2])
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,), generator=g)
        xb = x[idx] + 0.05 * torch.randn(x[idx].shape, generator=g)  # a little noise: samples are not pixel-perfect
        loss = F.cross_entropy(clf(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    with torch.no_grad():
        pred = clf(torch.from_numpy(test.x)).argmax(1).numpy()
    acc = float(np.mean(pred == test.factors["shape"] * N_COLOURS + test.factors["colour"]))
    log(f"classifier: held-out accuracy {acc:.3f} on 1000 real images")
    return clf, acc


@torch.no_grad()
def features(clf: Classifier, x: np.ndarray) -> np.ndarray:
    """The classifier's penultimate activations [n, 128]: the feature space of FD_cls."""
    body = clf.net[:-1]
    return torch.cat([body(torch.from_numpy(x[i:i + 512])) for i in range(0, len(x), 512)]).numpy()


@torch.no_grad()
def classify(clf: Classifier, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class [n], its probability [n]); class = shape * N_COLOURS + colour."""
    p = torch.cat([clf(torch.from_numpy(x[i:i + 512])).softmax(1) for i in range(0, len(x), 512)]).numpy()
    return p.argmax(1), p.max(1)
