"""Hostile training data and checkpoints: decompression bombs (images whose header claims far more pixels
than the file holds, zip entries that unpack to a GiB), FIFOs named as data, values beyond float32 and
JSON nested past Python's stack. Each is refused by the real command with a non-zero exit, one line on
stderr, no traceback and nothing written, before the cost is paid (peak memory is measured for the bombs).

The bombs are built by hand in a few milliseconds: a PNG's IHDR, a JPEG's SOF, a BMP's and a WebP's
header carry the size, and a zip of a GiB of zeros is 1 MB of repeated deflate blocks.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from discodiff import checkpoint as ckpt
from discodiff.config import SCHEMA_VERSION
from discodiff.data import MAX_PIXELS, encode_png
from discodiff.imageheader import image_size
from discodiff.errors import UserError
from discodiff.train.metrics import read_metrics
from tests.helpers import VENV_BIN, call, export_cli, one_error_line

MiB = 1 << 20
PEAK_RSS_BOUND = 600 * MiB   # refusing costs ~80 MB; decoding either bomb needs more than 1 GiB
NESTED = "[" * 200_000


# ---------------------------------------------------------------------------------------------- builders


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bomb(w: int, h: int, rows: int | None = None) -> bytes:
    """A 1-bit grey PNG of w x h zero pixels (or only its first `rows` rows, a truncated file claiming
    the full size). 16384x16384 is 32 KB on disk and 768 MB once decoded to RGB."""
    row, comp = bytes(1 + (w + 7) // 8), zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h if rows is None else rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(w: int, h: int) -> bytes:
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, h, w)
    return bytes(data)


def bmp_claiming(w: int, h: int) -> bytes:
    data = bytearray(cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    struct.pack_into("<ii", data, 18, w, h)
    return bytes(data)


def webp_lossless_claiming(w: int, h: int) -> bytes:
    data = bytearray(cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])[1])
    assert data[12:16] == b"VP8L"
    bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)     # keep the alpha and version bits
    data[21:25] = (bits | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


def zeros_deflated(mib: int) -> tuple[bytes, int]:
    """(raw deflate stream of `mib` MiB of zeros, its CRC-32): after a full flush the compressor's output
    for the next MiB of zeros is always the same block, so the stream is one block repeated."""
    zeros, comp = bytes(MiB), zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    last = comp.compress(zeros) + comp.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return first + block * (mib - 2) + last, crc


def write_zip(path: Path, entries: dict[str, bytes | tuple[bytes, int, int]]) -> Path:
    """A zip written field by field: bytes are stored as they are; (deflate stream, crc, size) entries are
    stored deflated with that declared size, so a bomb costs only its compressed bytes to make."""
    body, central = b"", b""
    for name, entry in entries.items():
        if isinstance(entry, bytes):
            method, payload, crc, size = 0, entry, zlib.crc32(entry), len(entry)
        else:
            method, (payload, crc, size) = 8, entry
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(payload), size, len(name), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(body))
        central += name.encode()
        body += b"PK\x03\x04" + fields + name.encode() + payload
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    path.write_bytes(body + central + end)
    return path


def safetensors_bytes(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


# ---------------------------------------------------------------------------------------------- the command


# The child reports its own high-water mark (VmHWM) at exit: wait4's ru_maxrss would also count the test
# worker's memory, which Linux carries into a (v)forked child across exec.
_REPORT_PEAK = """import atexit, re, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)))
sys.argv[0] = "discodiff-train"
from discodiff.train.cli import main
main()
"""


def train_peak(args: list, cwd: Path) -> tuple[int, str, int]:
    """discodiff-train as a real process -> (exit code, stderr, its own peak RSS in bytes). Killed after
    60 s, so a hang (a FIFO opened for reading blocks until someone writes) fails the test instead of
    stalling it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peak_file = cwd / "peak-kib.txt"
    with open(cwd / "stderr.txt", "w+") as err:
        p = subprocess.Popen([sys.executable, "-c", _REPORT_PEAK, str(peak_file), *map(str, args), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=err, cwd=cwd, env=env)
        timer = threading.Timer(60, p.kill)
        timer.start()
        try:
            p.wait()
        finally:
            timer.cancel()
        err.seek(0)
        peak = int(peak_file.read_text()) * 1024 if peak_file.exists() else 0
        return p.returncode, err.read(), peak


def _folder(root: Path, name: str, bad_name: str, bad: bytes | None) -> Path:
    """Two good 8x8 PNGs and `bad_name` holding `bad` (a FIFO when None), sorted last."""
    folder = root / name
    folder.mkdir()
    for i in range(2):
        (folder / f"img{i}.png").write_bytes(encode_png(np.zeros((3, 8, 8))))
    if bad is None:
        os.mkfifo(folder / bad_name)
    else:
        (folder / bad_name).write_bytes(bad)
    return folder


def _tiff() -> bytes:
    return cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))[1].tobytes()


def _good_zip_entries() -> dict[str, bytes]:
    return {f"img{i}.png": encode_png(np.zeros((3, 8, 8))) for i in range(2)}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, tuple[list, str]]:
    """name -> (argv without --out, a word the error line must contain)."""
    root = tmp_path_factory.mktemp("bombs")
    big_png = png_bomb(16384, 16384)
    gib, crc = zeros_deflated(1024)
    labels_bomb = zeros_deflated(128)
    for name in ("fifo.npy", "fifo.zip", "fifo"):
        os.mkfifo(root / name)
    x = np.ones((16, 2)); x[3, 1] = 1e300
    np.save(root / "big.npy", x)
    return {
        "png bomb 16384x16384 in a folder": (["--data", _folder(root, "png", "zz.png", big_png)], "16384x16384"),
        "png bomb 16384x16384, --resolution 8": (["--data", root / "png", "--resolution", "8"], "16384x16384"),
        "png claiming 40000x40000": (["--data", _folder(root, "png40k", "zz.png", png_bomb(40000, 40000, rows=2))],
                                     "40000x40000"),
        "jpeg claiming 65535x65535": (["--data", _folder(root, "jpg", "zz.jpg", jpeg_claiming(65535, 65535))],
                                      "65535x65535"),
        "bmp claiming 30000x30000": (["--data", _folder(root, "bmp", "zz.bmp", bmp_claiming(30000, -30000))],
                                     "30000x30000"),
        "webp claiming 16383x16383": (["--data", _folder(root, "webp", "zz.webp",
                                                         webp_lossless_claiming(16383, 16383))], "16383x16383"),
        "tiff named .png": (["--data", _folder(root, "tiff", "zz.png", _tiff())],
                            "not a PNG, JPEG, BMP or WebP"),
        "png bomb in a zip": (["--data", write_zip(root / "png.zip", {**_good_zip_entries(), "zz.png": big_png})],
                              "16384x16384"),
        "zip entry of 1 GiB": (["--data", write_zip(root / "gib.zip", {**_good_zip_entries(),
                                                                        "zz.png": (gib, crc, 1024 * MiB)})],
                               str(1024 * MiB)),
        "dataset.json of 128 MiB": (["--data", write_zip(root / "labels.zip", {
            **_good_zip_entries(), "dataset.json": (*labels_bomb, 128 * MiB)})], str(128 * MiB)),
        "dataset.json nested 200 KB deep": (["--data", write_zip(root / "nested.zip", {
            **_good_zip_entries(), "dataset.json": NESTED.encode()})], "nested too deeply"),
        "fifo as .npy": (["--data", root / "fifo.npy"], "FIFO"),
        "fifo as .zip": (["--data", root / "fifo.zip"], "FIFO"),
        "fifo without suffix": (["--data", root / "fifo"], "FIFO"),
        "fifo named .png in a folder": (["--data", _folder(root, "fifo_folder", "zz.png", None)], "zz.png"),
        "npy float64 1e300": (["--data", root / "big.npy"], "float32"),
    }


BOMB_CASES = ["png bomb 16384x16384 in a folder", "png bomb 16384x16384, --resolution 8", "png claiming 40000x40000",
              "jpeg claiming 65535x65535", "bmp claiming 30000x30000", "webp claiming 16383x16383", "tiff named .png",
              "png bomb in a zip", "zip entry of 1 GiB", "dataset.json of 128 MiB", "dataset.json nested 200 KB deep",
              "fifo as .npy", "fifo as .zip", "fifo without suffix", "fifo named .png in a folder",
              "npy float64 1e300"]
PEAK_CASES = ["png bomb 16384x16384 in a folder", "png bomb 16384x16384, --resolution 8", "png bomb in a zip",
              "zip entry of 1 GiB", "dataset.json of 128 MiB"]


def test_catalogue_is_complete(bombs):
    assert sorted(BOMB_CASES) == sorted(bombs)


@pytest.mark.parametrize("name", BOMB_CASES)
def test_train_refuses_with_one_line(name, bombs, tmp_path):
    args, word = bombs[name]
    rc, err, peak = train_peak([*args, "--out", tmp_path / "out"], tmp_path)
    if name in PEAK_CASES:
        assert 0 < peak < PEAK_RSS_BOUND, f"peak RSS {peak / MiB:.0f} MiB: the bomb was unpacked before the check"
    one_error_line(rc, err, "discodiff-train", word)
    assert not (tmp_path / "out").exists()


def test_bomb_builders_are_what_they_claim(bombs):
    """The refusals above are of real bombs: the PNG decodes to its full size (checked at 4096x4096 to stay
    cheap) and the zip entry really inflates to a GiB of zeros (checked on the first MiBs)."""
    img = cv2.imdecode(np.frombuffer(png_bomb(4096, 4096), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (4096, 4096)
    stream, _ = zeros_deflated(4)
    assert zlib.decompress(stream, -15) == bytes(4 * MiB)
    for data, w, h in ((jpeg_claiming(65535, 65535), 65535, 65535), (bmp_claiming(30000, -30000), 30000, 30000),
                       (webp_lossless_claiming(16383, 16383), 16383, 16383)):
        assert image_size(data)[1:] == (w, h)
    assert 16383 ** 2 > MAX_PIXELS


FORMATS = [(".png", [], c) for c in (1, 3, 4)] + [(".bmp", [], c) for c in (1, 3, 4)] + \
    [(".jpg", p, c) for p in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]) for c in (1, 3)] + \
    [(".webp", [cv2.IMWRITE_WEBP_QUALITY, q], c) for q in (80, 101) for c in (1, 3, 4)]   # 101: lossless


@pytest.mark.parametrize("ext,params,channels", FORMATS)
def test_header_size_matches_the_decoded_size(ext, params, channels):
    """The size read from the header is the size OpenCV decodes, for every format a folder may hold."""
    img = np.random.default_rng(0).integers(0, 255, (37, 53, channels)[:2 if channels == 1 else 3], dtype=np.uint8)
    buf = cv2.imencode(ext, img, params)[1]
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert image_size(buf.tobytes())[1:] == (decoded.shape[1], decoded.shape[0]) == (53, 37)


# ---------------------------------------------------------------------------------------------- checkpoints


def _ckpt_cases(root: Path) -> dict[str, tuple[bytes, str]]:
    from safetensors.numpy import save

    def meta(value) -> bytes:
        return save({"a": np.zeros(2, np.float32)}, metadata={ckpt.META_KEY: value})

    return {
        "header nested 200 KB deep": (safetensors_bytes(NESTED.encode()), "nested too deeply"),
        "metadata config nested 200 KB deep": (meta(NESTED), "nested too deeply"),
        "header a list": (safetensors_bytes(b"[1, 2]"), "not a JSON object"),
        "header entry not an object": (safetensors_bytes(b'{"a": 5}'), "not a JSON object"),
        "metadata value not a string": (safetensors_bytes(b'{"__metadata__": {"discodiff": 5}}'), "not a string"),
        "metadata a string": (safetensors_bytes(b'{"__metadata__": "discodiff"}'), "not a JSON object"),
        "header not utf-8": (safetensors_bytes(b'{"\xff": 1}'), "not valid JSON"),
    }


CKPT_CASES = ["header nested 200 KB deep", "metadata config nested 200 KB deep", "header a list",
              "header entry not an object", "metadata value not a string", "metadata a string", "header not utf-8"]


@pytest.mark.parametrize("name", CKPT_CASES)
def test_export_refuses_a_hostile_checkpoint_with_one_line(name, tmp_path, capsys):
    data, word = _ckpt_cases(tmp_path)[name]
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data)
    out = tmp_path / "bundle"
    rc, _, err = call(capsys, export_cli, "--checkpoint", bad, "--out", out, "--quiet")
    one_error_line(rc, err, "discodiff-export", word)
    assert not out.exists()


def test_export_refuses_a_fifo_checkpoint(tmp_path, capsys):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    rc, _, err = call(capsys, export_cli, "--checkpoint", fifo, "--out", tmp_path / "bundle", "--quiet")
    one_error_line(rc, err, "discodiff-export", "not a regular file")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("state", [{"__dict__": 5}, {"__tensor__": "nope"}, {"__dict__": [[[1], 2]]},
                                   "[" * 900 + "]" * 900])
def test_damaged_train_state_is_one_line(state, tmp_path):
    from safetensors.numpy import save_file

    skeleton = json.dumps({"schema": SCHEMA_VERSION, "state": state if isinstance(state, dict) else None})
    if isinstance(state, str):   # nested lists: valid JSON, deeper than unflatten (or json) can recurse
        skeleton = skeleton.replace("null", state)
    path = tmp_path / "train_state.safetensors"
    save_file({"x": np.zeros(1, np.float32)}, str(path), metadata={ckpt.META_KEY + "_state": skeleton})
    with pytest.raises(UserError) as exc:
        ckpt.load_state(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_metrics_reader_drops_a_nested_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"stage": 1, "step": 1}) + "\n" + NESTED + "\n")
    assert read_metrics(path) == [{"stage": 1, "step": 1}]


# ---------------------------------------------------------------------------------------------- controls


def test_good_folders_and_zips_still_load(tmp_path):
    """The checks refuse only what they should: every accepted format, grey/RGBA/16-bit pixels, class
    subfolders, a zip with dataset.json, and --resolution (each image resized as it is read)."""
    from discodiff.data import load, spec_for_path

    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65535, (12, 12, 3), dtype=np.uint16)
    images = {"a/grey.png": rng.integers(0, 255, (12, 12), dtype=np.uint8), "a/rgb16.png": rgb16,
              "a/rgba.png": rng.integers(0, 255, (12, 12, 4), dtype=np.uint8),
              "b/x.jpg": rng.integers(0, 255, (12, 12, 3), dtype=np.uint8),
              "b/x.bmp": rng.integers(0, 255, (12, 12, 3), dtype=np.uint8),
              "b/x.webp": rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)}
    for rel, img in images.items():
        (tmp_path / "f" / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(tmp_path / "f" / rel), img)
    ds = load(spec_for_path(str(tmp_path / "f")))
    assert ds.x.shape == (6, 3, 12, 12) and ds.class_names == ["a", "b"] and list(ds.labels) == [0, 0, 0, 1, 1, 1]
    want16 = (cv2.cvtColor(rgb16, cv2.COLOR_BGR2RGB) / 65535 * 255).round()   # the 16-bit -> 8-bit rounding
    assert np.array_equal(np.round((ds.x[1].transpose(1, 2, 0) + 1) * 127.5), want16)
    assert load(spec_for_path(str(tmp_path / "f"), resolution=4)).x.shape == (6, 3, 4, 4)

    labels = json.dumps({"labels": [["img0.png", 0], ["img1.png", 1]]}).encode()
    zipped = write_zip(tmp_path / "d.zip", {**_good_zip_entries(), "dataset.json": labels})
    ds = load(spec_for_path(str(zipped)))
    assert ds.x.shape == (2, 3, 8, 8) and list(ds.labels) == [0, 1] and ds.num_classes == 2
    png = encode_png(np.zeros((3, 8, 8)))                                # a deflated entry, as zip tools write
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    entry = (comp.compress(png) + comp.flush(), zlib.crc32(png), len(png))
    assert len(load(spec_for_path(str(write_zip(tmp_path / "z.zip", {**_good_zip_entries(), "c.png": entry}))))) == 3
