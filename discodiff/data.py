"""Data sets: float32 vectors (.npy), image folders, EDM-style zips, and built-in presets.

Torch-free: everything is loaded into memory as numpy (the data sets this toolkit targets are small),
and training turns it into tensors. Images are float32 [N, C, H, W] in [-1, 1]; vectors [N, D].
Every problem with the input raises `UserError` with one line that names the file.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from discodiff.config import DataSpec
from discodiff.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_CLASSES = 100_000    # labels are bounded before anything is allocated from them


@dataclass
class Dataset:
    x: np.ndarray                       # float32 [N, D] or [N, C, H, W] in [-1, 1]
    labels: np.ndarray | None = None    # int64 [N], or None when unconditional
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # known true factors (presets)
    name: str = ""

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])


# ---------------------------------------------------------------------------------------------
# Built-in presets


def toy8(n: int, seed: int, radius: float = 3.0, std: float = 0.2) -> Dataset:
    """The paper's toy: a mixture of 8 Gaussians on a circle (Xu et al. 2024, Sec. 5.1)."""
    rng = np.random.default_rng(seed)
    comp = rng.integers(8, size=n)
    centres = toy8_centres(radius)
    x = centres[comp] + std * rng.standard_normal((n, 2))
    return Dataset(x=x.astype(np.float32), factors={"component": comp.astype(np.int64)}, name="toy8")


def toy8_centres(radius: float = 3.0) -> np.ndarray:
    angles = 2 * np.pi * np.arange(8) / 8
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [8, 2]


def shapes(n: int, res: int, seed: int) -> Dataset:
    from discodiff.shapes import COLOURS, SHAPES, make_shapes

    images, shape, colour = make_shapes(n, res, seed)
    return Dataset(
        x=_to_float_chw(images),
        labels=shape,
        num_classes=len(SHAPES),
        class_names=list(SHAPES),
        factors={"shape": shape, "colour": colour, "colour_names": np.array(list(COLOURS))},
        name="shapes",
    )


# ---------------------------------------------------------------------------------------------
# Files


def load_npy(path: Path) -> Dataset:
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user-facing problem
        raise UserError(f"cannot read {path} as a .npy array ({e}); save vectors with numpy.save as float32 [N, D]")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise UserError(f"{path} has shape {list(x.shape)}, but vector data must be [N, D] with N >= 2; reshape it to 2-D")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"{path} has dtype {x.dtype}; vector data must be numeric (float32)")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{path} contains NaN or inf values; clean the data before training")
    return Dataset(x=x, name=path.stem)


def _decode(data: bytes, where: str) -> np.ndarray:
    level = cv2.getLogLevel()
    cv2.setLogLevel(0)  # silent (OpenCV 4 and 5): a damaged file gets our one-line error, not OpenCV's warning too
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    finally:
        cv2.setLogLevel(level)
    if img is None:
        raise UserError(f"cannot decode image {where}: the file is corrupt or not an image; remove or replace it")
    if not np.issubdtype(img.dtype, np.integer):
        raise UserError(f"image {where} has {img.dtype} pixels (a floating-point TIFF or EXR?); save it as an 8- or "
                        "16-bit PNG or JPEG")
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise UserError(f"image {where} has {img.shape[2]} channels; save it as grey, RGB or RGBA")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype != np.uint8:
        img = (img / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    return img


def _stack(images: list[np.ndarray], names: list[str], resolution: int, source: Path) -> np.ndarray:
    if resolution:
        images = [_resize_square(img, resolution) for img in images]
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(n for n, img in zip(names, images) if img.shape != first)
        raise UserError(
            f"images in {source} differ in size ({names[0]} is {first[1]}x{first[0]}, {odd} is not); "
            "pass --resolution R to resize them all to RxR"
        )
    return np.stack(images)


def _resize_square(img: np.ndarray, res: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)  # centre crop to a square, then area-resample
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(img, (res, res), interpolation=cv2.INTER_AREA)


def _to_float_chw(images: np.ndarray) -> np.ndarray:
    # uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]
    return (images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).copy()


def load_folder(path: Path, resolution: int) -> Dataset:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UserError(f"{path} contains no images ({', '.join(IMAGE_EXTS)}); point --data at a folder of images")
    rel = [f.relative_to(path) for f in files]
    # One class per immediate subfolder, when every image sits in one.
    classes = sorted({r.parts[0] for r in rel}) if all(len(r.parts) > 1 for r in rel) else []
    images = [_decode(f.read_bytes(), str(f)) for f in files]
    x = _stack(images, [str(r) for r in rel], resolution, path)
    labels = np.array([classes.index(r.parts[0]) for r in rel], np.int64) if len(classes) > 1 else None
    return Dataset(x=_to_float_chw(x), labels=labels, num_classes=len(classes) if labels is not None else 0,
                   class_names=classes if labels is not None else [], name=path.name)


def load_zip(path: Path, resolution: int) -> Dataset:
    """EDM-style zip: images plus an optional dataset.json {"labels": [[name, label], ...]}."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"cannot open {path} as a zip ({e}); make it with EDM's dataset_tool.py or zip a folder of PNGs")
    with zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTS))
        if not names:
            raise UserError(f"{path} contains no images; an EDM-style zip holds PNGs and dataset.json")
        label_map = _zip_labels(zf, path, set(names)) if "dataset.json" in zf.namelist() else None
        images = []
        for n in names:
            try:
                data = zf.read(n)
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f"cannot read {n} from {path} ({e}); the zip is damaged, rebuild it")
            images.append(_decode(data, f"{n} in {path}"))
    x = _stack(images, names, resolution, path)
    labels, num_classes = None, 0
    if label_map is not None:
        missing = [n for n in names if n not in label_map]
        if missing:
            raise UserError(f"{path}: dataset.json has no label for {missing[0]}; label every image or drop the labels")
        labels = np.array([label_map[n] for n in names], np.int64)
        num_classes = int(labels.max()) + 1
    return Dataset(x=_to_float_chw(x), labels=labels, num_classes=num_classes, name=path.stem)


def _zip_labels(zf: zipfile.ZipFile, path: Path, images: set[str]) -> dict[str, int] | None:
    """dataset.json's {"labels": [[name, label], ...]} as {name: label}, every label an integer in
    0..MAX_CLASSES-1 naming an image of the zip (checked before anything is allocated from them)."""
    form = 'it must be {"labels": [[name, label], ...]} with integer labels 0..C-1'
    try:
        meta = json.loads(zf.read("dataset.json"))
        pairs = meta.get("labels") if isinstance(meta, dict) else None
        if not pairs:
            return None
        label_map = {}
        for name, lab in pairs:
            if not isinstance(name, str) or not isinstance(lab, int) or isinstance(lab, bool):
                raise ValueError(f"entry [{name!r}, {lab!r}] is not [file name, integer label]")
            label_map[name] = lab
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: dataset.json is malformed ({' '.join(str(e).split())[:200]}); {form}")
    bad = next((n for n, lab in label_map.items() if not 0 <= lab < MAX_CLASSES), None)
    if bad is not None:
        raise UserError(f"{path}: dataset.json gives {bad} the label {label_map[bad]}, outside 0..{MAX_CLASSES - 1}; {form}")
    stray = sorted(set(label_map) - images)
    if stray:
        raise UserError(f"{path}: dataset.json labels {stray[0]}, which is not an image in the zip; fix dataset.json "
                        "or add the file")
    return label_map


def load(spec: DataSpec) -> Dataset:
    if spec.kind == "preset":
        from discodiff.presets import preset_dataset

        return preset_dataset(spec)
    path = Path(spec.path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist; pass --data with a .npy file, an image folder or a zip")
    if spec.kind == "npy":
        ds = load_npy(path)
    elif spec.kind == "folder":
        ds = load_folder(path, spec.resolution)
    elif spec.kind == "zip":
        ds = load_zip(path, spec.resolution)
    else:
        raise UserError(f"unknown data kind {spec.kind!r}; use preset, npy, folder or zip")
    if len(ds) < 2:
        raise UserError(f"{path} holds {len(ds)} example(s); training needs at least 2")
    return ds


def spec_for_path(path: str, resolution: int = 0) -> DataSpec:
    """Guess the data kind from a path given with --data."""
    p = Path(path)
    if p.is_dir():
        kind = "folder"
    elif p.suffix.lower() == ".npy":
        kind = "npy"
    elif p.suffix.lower() == ".zip":
        kind = "zip"
    elif not p.exists():
        raise UserError(f"data path {p} does not exist; pass --data with a .npy file, an image folder or a zip")
    else:
        raise UserError(f"cannot tell what {p} is; --data takes a .npy file [N, D], a folder of images or a .zip")
    return DataSpec(kind=kind, path=os.fspath(p), resolution=resolution)


def encode_png(img_chw: np.ndarray) -> bytes:
    """float [3, H, W] in [-1, 1] -> PNG bytes (used by tests to build fixtures)."""
    u8 = np.clip((img_chw.transpose(1, 2, 0) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR))
    assert ok
    return io.BytesIO(buf.tobytes()).getvalue()
