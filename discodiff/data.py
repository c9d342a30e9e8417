"""Data sets: float32 vectors (.npy), image folders, EDM-style zips, and the built-in data sets (toy8,
shapes) that presets name. Below `presets` (which picks models and training options for them): this
module imports no preset.

Torch-free: everything is loaded into memory as numpy (the data sets this toolkit targets are small),
and training turns it into tensors. Images are float32 [N, C, H, W] in [-1, 1]; vectors [N, D].
Every problem with the input raises `UserError` with one line that names the file.

Untrusted files are bounded before they cost anything: only regular files are opened (a FIFO would
block), an image's size is read from its header before it is decoded (a 100 KB PNG can claim 30000x30000
pixels), and a zip entry's unpacked size is checked before it is read.
"""
from __future__ import annotations

import io
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from discodiff.config import DataSpec
from discodiff.errors import UserError
from discodiff.imageheader import image_size
from discodiff.jsonfile import parse_json
from discodiff.shapes import COLOURS, SHAPES, make_shapes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_CLASSES = 100_000    # labels are bounded before anything is allocated from them
MAX_PIXELS = 2**26       # 8192 x 8192 per image: generous for training data; a decode then stays under ~0.5 GB
MAX_IMAGE_BYTES = 2**29  # an image file (or zip entry) larger than any image of MAX_PIXELS pixels needs
MAX_LABELS_BYTES = 2**26  # dataset.json: 64 MiB holds labels for about two million images


@dataclass
class Dataset:
    """A data set in memory, with what training and the benchmarks need to know about it."""

    x: np.ndarray                       # float32 [N, D] or [N, C, H, W] in [-1, 1]
    labels: np.ndarray | None = None    # int64 [N], or None when unconditional
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # known true factors (presets)
    name: str = ""

    @property
    def is_image(self) -> bool:
        """True for images [N, C, H, W], False for vectors [N, D]."""
        return self.x.ndim == 4

    @property
    def data_shape(self) -> tuple[int, ...]:
        """One example's shape: (D,) or (C, H, W)."""
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
    """The 8 mixture means, evenly spaced on a circle of `radius`: float64 [8, 2]."""
    angles = 2 * np.pi * np.arange(8) / 8
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [8, 2]


def shapes(n: int, res: int, seed: int) -> Dataset:
    """The `shapes` images (discodiff.shapes): n RGB images res x res, labelled by shape, colour a factor."""
    images, shape, colour = make_shapes(n, res, seed)
    return Dataset(
        x=_to_float_chw(images),
        labels=shape,
        num_classes=len(SHAPES),
        class_names=list(SHAPES),
        factors={"shape": shape, "colour": colour, "colour_names": np.array(list(COLOURS))},
        name="shapes",
    )


def preset_dataset(spec: DataSpec) -> Dataset:
    """The built-in data set a `kind="preset"` spec names ("toy8" or "shapes"), at its size and seed."""
    if spec.preset == "toy8":
        return toy8(spec.n, spec.seed)
    if spec.preset == "shapes":
        return shapes(spec.n, spec.resolution, spec.seed)
    raise UserError(f"unknown data preset {spec.preset!r}")


# ---------------------------------------------------------------------------------------------
# Files


def check_path(path: Path) -> None:
    """`path` exists and is a regular file or a folder; checked with stat, before anything is opened
    (opening a FIFO blocks until someone writes to it, a device may never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"data path {path} does not exist; pass --data with a .npy file, an image folder or a "
                        "zip") from None
    except OSError as e:
        raise UserError(f"cannot read data path {path} ({e.strerror}); check it and its permissions") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(f"data path {path} is not a regular file or a folder (a FIFO, socket or device); pass --data "
                        "with a .npy file, an image folder or a zip")


def _open_regular(path: Path):
    """A binary file object for `path`, refused unless it is a regular file. O_NONBLOCK lets the open of a
    FIFO return at once, and the check is made on the opened file, so a swap after `check_path` is caught."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"cannot open {path} ({e.strerror}); check it and its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file (a folder, FIFO, socket or device); remove it or point --data "
                        "elsewhere")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def load_npy(path: Path) -> Dataset:
    """Vectors from a .npy file: numeric [N, D], N >= 2, finite and within float32 (no pickles) -> float32."""
    try:
        with _open_regular(path) as f:
            x = np.load(f, allow_pickle=False)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user-facing problem
        raise UserError(f"cannot read {path} as a .npy array ({e}); save vectors with numpy.save as float32 [N, D]")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise UserError(f"{path} has shape {list(x.shape)}, but vector data must be [N, D] with N >= 2; reshape it to 2-D")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"{path} has dtype {x.dtype}; vector data must be numeric (float32)")
    # Checked before the cast to float32, which would warn (on stderr) about values beyond its range.
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise UserError(f"{path} contains NaN or inf values; clean the data before training")
        big = float(np.abs(x).max()) if x.size else 0.0
        if big > np.finfo(np.float32).max:
            raise UserError(f"{path} holds values up to {big:.3g}, beyond float32's range (3.4e38); rescale the data "
                            "(standardise each dimension) before training")
    return Dataset(x=x.astype(np.float32), name=path.stem)


def _check_size(data: bytes, where: str) -> None:
    """Refuse, from the header alone, an image that is not a known format or is too large to decode."""
    try:
        fmt, w, h = image_size(data)
    except ValueError as e:
        raise UserError(f"cannot decode image {where}: {e}; save it as PNG, JPEG, BMP or WebP, or remove it") from None
    if w <= 0 or h <= 0:
        raise UserError(f"cannot decode image {where}: its {fmt} header gives a size of {w}x{h}; remove or replace it")
    if w * h > MAX_PIXELS:
        raise UserError(f"image {where} is {w}x{h} pixels ({fmt}), more than the {MAX_PIXELS} (8192x8192) this "
                        "toolkit decodes; downscale it before training, or remove it")


# ---------------------------------------------------------------------------------------------
# Decoding


def _load_image(data: bytes, where: str, resolution: int) -> np.ndarray:
    """Bytes of one image file -> uint8 [H, W, 3] RGB (RxR when `resolution`), the size checked first.
    Resized one at a time, so a folder of large images never holds more than one at full size."""
    _check_size(data, where)
    try:
        img = _decode(data, where)
        return _resize_square(img, resolution) if resolution else img
    except cv2.error as e:
        why = " ".join(str(e).split())[-200:]
        raise UserError(f"cannot decode image {where} (OpenCV: {why}); remove or replace it") from None


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
    if img.dtype != np.uint8:  # 16-bit -> 8-bit in one pass to uint8 (rounded), before the colour copy
        img = cv2.convertScaleAbs(img, alpha=255 / np.iinfo(img.dtype).max)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def _stack(images: list[np.ndarray], names: list[str], source: Path) -> np.ndarray:
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


def _image_files(path: Path) -> list[Path]:
    """The image files under `path`; one that is not a regular file (a FIFO, a broken link) is refused
    rather than opened or silently skipped."""
    files = []
    for p in sorted(path.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        try:
            mode = p.stat().st_mode
        except OSError as e:
            raise UserError(f"cannot read image {p} ({e.strerror}; a broken link?); remove or fix it") from None
        if stat.S_ISREG(mode):
            files.append(p)
        elif not stat.S_ISDIR(mode):
            raise UserError(f"{p} is not a regular file (a FIFO, socket or device); remove it from {path}")
    return files


def _read_image_file(p: Path) -> bytes:
    with _open_regular(p) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_IMAGE_BYTES:
            raise UserError(f"image {p} is {size} bytes, more than any image of at most {MAX_PIXELS} pixels needs "
                            f"({MAX_IMAGE_BYTES}); downscale it or remove it")
        return f.read(MAX_IMAGE_BYTES)


def load_folder(path: Path, resolution: int) -> Dataset:
    """Images from a folder (one class per subfolder when every image sits in one and there are several),
    resized to `resolution` x `resolution` when it is given."""
    files = _image_files(path)
    if not files:
        raise UserError(f"{path} contains no images ({', '.join(IMAGE_EXTS)}); point --data at a folder of images")
    rel = [f.relative_to(path) for f in files]
    # One class per immediate subfolder, when every image sits in one.
    classes = sorted({r.parts[0] for r in rel}) if all(len(r.parts) > 1 for r in rel) else []
    images = [_load_image(_read_image_file(f), str(f), resolution) for f in files]
    x = _stack(images, [str(r) for r in rel], path)
    labels = np.array([classes.index(r.parts[0]) for r in rel], np.int64) if len(classes) > 1 else None
    return Dataset(x=_to_float_chw(x), labels=labels, num_classes=len(classes) if labels is not None else 0,
                   class_names=classes if labels is not None else [], name=path.name)


def load_zip(path: Path, resolution: int) -> Dataset:
    """EDM-style zip: images plus an optional dataset.json {"labels": [[name, label], ...]}."""
    with _open_regular(path) as f:
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise UserError(f"cannot open {path} as a zip ({e}); make it with EDM's dataset_tool.py or zip a folder "
                            "of PNGs") from None
        with zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTS))
            if not names:
                raise UserError(f"{path} contains no images; an EDM-style zip holds PNGs and dataset.json")
            label_map = _zip_labels(zf, path, set(names)) if "dataset.json" in zf.namelist() else None
            images = [_load_image(_read_entry(zf, n, path, MAX_IMAGE_BYTES), f"{n} in {path}", resolution)
                      for n in names]
    x = _stack(images, names, path)
    labels, num_classes = None, 0
    if label_map is not None:
        missing = [n for n in names if n not in label_map]
        if missing:
            raise UserError(f"{path}: dataset.json has no label for {missing[0]}; label every image or drop the labels")
        labels = np.array([label_map[n] for n in names], np.int64)
        num_classes = int(labels.max()) + 1
    return Dataset(x=_to_float_chw(x), labels=labels, num_classes=num_classes, name=path.stem)


def _read_entry(zf: zipfile.ZipFile, name: str, path: Path, limit: int) -> bytes:
    """One zip entry's bytes, refused from its declared size before anything is unpacked (a 1 MB zip can
    hold a 1 GiB entry)."""
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise UserError(f"{name} in {path} unpacks to {info.file_size} bytes, more than the {limit} this toolkit "
                        "reads for it; remove it from the zip")
    try:
        with zf.open(info) as f:
            return f.read(limit)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {name} from {path} ({e}); the zip is damaged or encrypted, rebuild it") from None


def _zip_labels(zf: zipfile.ZipFile, path: Path, images: set[str]) -> dict[str, int] | None:
    """dataset.json's {"labels": [[name, label], ...]} as {name: label}, every label an integer in
    0..MAX_CLASSES-1 naming an image of the zip (checked before anything is allocated from them)."""
    form = 'it must be {"labels": [[name, label], ...]} with integer labels 0..C-1'
    meta = parse_json(_read_entry(zf, "dataset.json", path, MAX_LABELS_BYTES), f"dataset.json in {path}", form)
    try:
        pairs = meta.get("labels") if isinstance(meta, dict) else None
        if not pairs:
            return None
        label_map = {}
        for name, lab in pairs:
            if not isinstance(name, str) or not isinstance(lab, int) or isinstance(lab, bool):
                raise ValueError(f"entry [{name!r}, {lab!r}] is not [file name, integer label]")
            label_map[name] = lab
    except (ValueError, TypeError, AttributeError) as e:
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
    """The data set `spec` describes: a built-in preset, a .npy file, an image folder or an EDM-style zip;
    one UserError line for anything wrong with it (and for fewer than 2 examples)."""
    if spec.kind == "preset":
        return preset_dataset(spec)
    path = Path(spec.path)
    check_path(path)
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
    check_path(p)
    if p.is_dir():
        kind = "folder"
    elif p.suffix.lower() == ".npy":
        kind = "npy"
    elif p.suffix.lower() == ".zip":
        kind = "zip"
    else:
        raise UserError(f"cannot tell what {p} is; --data takes a .npy file [N, D], a folder of images or a .zip")
    return DataSpec(kind=kind, path=os.fspath(p), resolution=resolution)


def encode_png(img_chw: np.ndarray) -> bytes:
    """float [3, H, W] in [-1, 1] -> PNG bytes (used by tests to build fixtures)."""
    u8 = np.clip((img_chw.transpose(1, 2, 0) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR))
    assert ok
    return io.BytesIO(buf.tobytes()).getvalue()
