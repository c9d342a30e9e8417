"""The `shapes` data set: small RGB images with clear discrete modes, rendered with opencv.

Each image holds one shape (circle, square, triangle: the class label) in one of four colours (an
unlabelled discrete factor the latents should discover), at a random position and size, on black.
Shapes are drawn at 4x resolution and area-downsampled, so edges are anti-aliased.
"""
from __future__ import annotations

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # RGB in [0, 255]
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
SUPERSAMPLE = 4


def render(shape: int, colour: int, cx: float, cy: float, radius: float, res: int) -> np.ndarray:
    """One image, uint8 [res, res, 3] RGB. Position and radius are in pixels of the final image."""
    s = SUPERSAMPLE
    canvas = np.zeros((res * s, res * s, 3), np.uint8)
    rgb = tuple(int(c) for c in list(COLOURS.values())[colour])
    x, y, r = cx * s, cy * s, radius * s
    if SHAPES[shape] == "circle":
        cv2.circle(canvas, (round(x), round(y)), round(r), rgb, thickness=-1, lineType=cv2.LINE_AA)
    elif SHAPES[shape] == "square":
        h = r * 0.85  # a square of the same visual weight as the circle
        pts = np.array([[x - h, y - h], [x + h, y - h], [x + h, y + h], [x - h, y + h]])
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], rgb, lineType=cv2.LINE_AA)
    else:
        angles = np.deg2rad([-90.0, 30.0, 150.0])  # point up
        pts = np.stack([x + r * np.cos(angles), y + r * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], rgb, lineType=cv2.LINE_AA)
    return cv2.resize(canvas, (res, res), interpolation=cv2.INTER_AREA)


def make_shapes(n: int, res: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images: (uint8 [n, res, res, 3], shape labels int64 [n], colour labels int64 [n])."""
    rng = np.random.default_rng(seed)
    shape = rng.integers(len(SHAPES), size=n)
    colour = rng.integers(len(COLOURS), size=n)
    radius = rng.uniform(0.22, 0.36, size=n) * res
    margin = radius + 0.5
    cx = rng.uniform(margin, res - margin)
    cy = rng.uniform(margin, res - margin)
    images = np.stack([render(shape[i], colour[i], cx[i], cy[i], radius[i], res) for i in range(n)])
    return images, shape.astype(np.int64), colour.astype(np.int64)
