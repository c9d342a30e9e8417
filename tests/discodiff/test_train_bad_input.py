"""Bad input to discodiff-train: a non-zero exit, exactly one line on stderr saying 'error', and no
files written (the --out directory is not created, or is left exactly as it was)."""
from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import VENV_BIN, train_cli as train, tree_digest
from discodiff.data import encode_png


def _good_pngs(folder: Path, n: int = 3, res: int = 8) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = b""
    for i in range(n):
        data = encode_png(rng.uniform(-1, 1, (3, res, res)))
        (folder / f"img{i}.png").write_bytes(data)
    return data


@pytest.fixture
def cases(tmp_path) -> dict[str, list[str]]:
    """name -> argv (without --out)."""
    garbage = tmp_path / "garbage"
    _good_pngs(garbage)
    (garbage / "zz_bad.png").write_bytes(b"definitely not a PNG file " * 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(tmp_path / "v1.npy", np.zeros(10, np.float32))
    np.save(tmp_path / "v3.npy", np.zeros((4, 2, 2), np.float32))
    np.save(tmp_path / "good.npy", np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32))
    tiff = tmp_path / "tiff"
    _good_pngs(tiff)
    ok, buf = cv2.imencode(".tiff", np.random.default_rng(0).random((8, 8, 3)).astype(np.float32))
    (tiff / "zz_float.png").write_bytes(buf.tobytes())              # a float32 TIFF named .png
    zips = {}
    for name, labels in (("huge_label", [["img0.png", 0], ["img1.png", 2**40]]),
                         ("label_for_missing_file", [["img0.png", 0], ["img1.png", 1], ["nope.png", 1]]),
                         ("label_not_int", [["img0.png", "cat"], ["img1.png", 0]]),
                         ("negative_label", [["img0.png", -1], ["img1.png", 0]])):
        zips[name] = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(zips[name], "w") as zf:
            for i in range(2):
                zf.writestr(f"img{i}.png", encode_png(np.zeros((3, 8, 8))))
            zf.writestr("dataset.json", json.dumps({"labels": labels}))
    return {
        "unknown preset": ["--preset", "nope"],
        "missing data": ["--data", str(tmp_path / "missing.npy")],
        "missing data folder": ["--data", str(tmp_path / "no_such_folder")],
        "empty folder": ["--data", str(empty)],
        "garbage png among good ones": ["--data", str(garbage)],
        "npy 1-D": ["--data", str(tmp_path / "v1.npy")],
        "npy 3-D": ["--data", str(tmp_path / "v3.npy")],
        "steps 0": ["--preset", "toy8-tiny", "--steps", "0"],
        "steps -1": ["--preset", "toy8-tiny", "--steps", "-1"],
        "prior-steps 0": ["--preset", "toy8-tiny", "--prior-steps", "0"],
        "resume nothing": ["--resume"],
        "preset and data": ["--preset", "toy8-tiny", "--data", str(tmp_path / "good.npy")],
        "resolution with a preset": ["--preset", "toy8-tiny", "--resolution", "8"],
        "float32 tiff as png": ["--data", str(tiff)],
        **{f"zip {k.replace('_', ' ')}": ["--data", str(v), "--resolution", "8"] for k, v in zips.items()},
        "lr inf": ["--preset", "toy8-tiny", "--lr", "inf"],
        "lr nan": ["--preset", "toy8-tiny", "--lr", "nan"],
        "gumbel-tau nan": ["--preset", "toy8-tiny", "--gumbel-tau", "nan"],
        "latent-dropout nan": ["--preset", "toy8-tiny", "--latent-dropout", "nan"],
        "steps superscript": ["--preset", "toy8-tiny", "--steps", "\u00b2"],
        "seed int64 max": ["--preset", "toy8-tiny", "--seed", "9223372036854775807"],
        "threads 0": ["--preset", "toy8-tiny", "--threads", "0"],
        "threads past the cores": ["--preset", "toy8-tiny", "--threads", "100000"],
    }


CASE_NAMES = ["unknown preset", "missing data", "missing data folder", "empty folder",
              "garbage png among good ones", "npy 1-D", "npy 3-D", "steps 0", "steps -1", "prior-steps 0",
              "resume nothing", "preset and data", "resolution with a preset", "float32 tiff as png",
              "zip huge label", "zip label for missing file", "zip label not int", "zip negative label", "lr inf",
              "lr nan", "gumbel-tau nan", "latent-dropout nan", "steps superscript", "seed int64 max", "threads 0",
              "threads past the cores"]


def _check(rc: int, err: str):
    lines = err.strip().splitlines()
    assert rc != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("discodiff-train: error: ") and "error" in lines[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_new_out_dir(name, cases, tmp_path, capfd):
    out = tmp_path / "out"
    capfd.readouterr()
    rc = train(*cases[name], "--out", out, "--quiet")
    _check(rc, capfd.readouterr().err)
    assert rc == 2
    assert not out.exists()


@pytest.mark.parametrize("name", ["npy 1-D", "garbage png among good ones", "resume nothing", "steps 0"])
def test_bad_input_existing_out_dir_is_unchanged(name, cases, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = tree_digest(out)
    capfd.readouterr()
    rc = train(*cases[name], "--out", out, "--quiet")
    _check(rc, capfd.readouterr().err)
    assert tree_digest(out) == before


def test_resume_in_an_empty_dir(tmp_path, capfd):
    out = tmp_path / "empty_run"
    out.mkdir()
    capfd.readouterr()
    rc = train("--out", out, "--resume", "--quiet")
    _check(rc, capfd.readouterr().err)
    assert list(out.iterdir()) == []


def test_truncated_png_gives_one_line(tmp_path, capfd):
    folder = tmp_path / "imgs"
    good = _good_pngs(folder)
    (folder / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    capfd.readouterr()
    rc = train("--data", folder, "--out", out, "--quiet")
    err = capfd.readouterr().err
    assert rc == 2 and not out.exists()  # these hold; only the line count fails
    _check(rc, err)


def _console(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(VENV_BIN / "discodiff-train"), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)


@pytest.mark.slow
def test_console_script_end_to_end(cases, tmp_path):
    """The real entry point: exit code 2, one stderr line, nothing on stdout, nothing written."""
    out = tmp_path / "out"
    for name in ("garbage png among good ones", "steps -1"):
        p = _console([*cases[name], "--out", str(out), "--quiet"], tmp_path)
        assert p.returncode == 2, (name, p.stderr)
        _check(p.returncode, p.stderr)
        assert p.stdout == ""
        assert not out.exists()
    assert not (tmp_path / "runs").exists()
