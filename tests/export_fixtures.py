"""Session-level helpers for the export / bundle / runtime tests: tiny training runs and their ONNX
bundles, each built once per session through the real in-process CLIs, plus small file helpers.

Test modules use them with `from export_fixtures import *`. A fixture function imported into several
modules is registered once per module by pytest, so the expensive builds are memoised here, in this
module's globals, keyed by what they build: each run / bundle is made once per session.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from discodiff.cli_util import run

GRAPHS = ("denoiser", "denoiser_fp16", "encoder", "prior_step", "prior_recompute")
MAX_BATCH, OPT_BATCH = 8, 4
PRESETS = {"toy8": "toy8-tiny", "shapes": "shapes-tiny"}

_BUILT: dict[str, Path] = {}
_MODELS: dict[str, object] = {}


# ---------------------------------------------------------------------------------------------- CLIs


def train_cli(*args) -> int:
    from discodiff.train import cli

    return run(cli.command, args=[str(a) for a in args], prog="discodiff-train")


def export_cli(*args) -> int:
    from discodiff.export import cli

    return run(cli.command, args=[str(a) for a in args], prog="discodiff-export")


def run_cli(*args) -> int:
    from discodiff.runtime import cli

    return run(cli.command, args=[str(a) for a in args], prog="discodiff-run")


def call(capsys, fn, *args) -> tuple[int, str, str]:
    """Run one in-process CLI call; returns (exit code, stdout, stderr) of that call only."""
    capsys.readouterr()
    rc = fn(*args)
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------- threads


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """torch with `n` intra-op threads, restored afterwards. The tiny models gain nothing from a second
    thread, and on a shared 2-core machine torch's OpenMP barriers make a 2-thread forward pass up to
    ~100x slower when another process holds a core."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


# ---------------------------------------------------------------------------------------------- builds


def _build_run(name: str, factory) -> Path:
    key = f"run:{name}"
    if key not in _BUILT:
        out = factory.mktemp(f"exp-{name}") / "run"
        with torch_threads(1):
            rc = train_cli("--preset", PRESETS[name], "--out", out, "--quiet")
        assert rc == 0, f"training {name} failed"
        assert (out / "model.safetensors").is_file()
        _BUILT[key] = out
    return _BUILT[key]


def _build_bundle(name: str, factory) -> Path:
    key = f"bundle:{name}"
    if key not in _BUILT:
        run_dir = _build_run(name, factory)
        out = run_dir / "bundle"
        with torch_threads(1):
            rc = export_cli("--checkpoint", run_dir / "model.safetensors", "--out", out,
                            "--max-batch", MAX_BATCH, "--opt-batch", OPT_BATCH, "--quiet")
        assert rc == 0, f"exporting {name} failed"
        _BUILT[key] = out
    return _BUILT[key]


def get_run(name: str, factory) -> Path:
    return _build_run(name, factory)


def get_bundle(name: str, factory) -> Path:
    return _build_bundle(name, factory)


def get_model(name: str, factory):
    if name not in _MODELS:
        from discodiff.checkpoint import load_model

        _MODELS[name] = load_model(_build_run(name, factory) / "model.safetensors")[0].eval()
    return _MODELS[name]


@pytest.fixture(scope="session")
def toy8_train_dir(tmp_path_factory) -> Path:
    """A finished toy8-tiny run (2-D points, unconditional, m=1, k=8)."""
    return get_run("toy8", tmp_path_factory)


@pytest.fixture(scope="session")
def shapes_train_dir(tmp_path_factory) -> Path:
    """A finished shapes-tiny run (8x8 RGB, 3 classes, m=2, k=4)."""
    return get_run("shapes", tmp_path_factory)


@pytest.fixture(scope="session")
def toy8_bundle(tmp_path_factory) -> Path:
    """The toy8-tiny bundle (shared: copy it before changing anything)."""
    return get_bundle("toy8", tmp_path_factory)


@pytest.fixture(scope="session")
def shapes_bundle(tmp_path_factory) -> Path:
    """The shapes-tiny bundle (shared: copy it before changing anything)."""
    return get_bundle("shapes", tmp_path_factory)


@pytest.fixture(scope="session")
def toy8_net(tmp_path_factory):
    return get_model("toy8", tmp_path_factory)


@pytest.fixture(scope="session")
def shapes_net(tmp_path_factory):
    return get_model("shapes", tmp_path_factory)


# ---------------------------------------------------------------------------------------------- files


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_bundle(src: Path, dst: Path) -> Path:
    """A copy of a bundle to tamper with."""
    shutil.copytree(src, dst)
    return dst


def read_manifest(bundle: Path) -> dict:
    return json.loads((Path(bundle) / "manifest.json").read_text())


def write_manifest(bundle: Path, man: dict) -> None:
    (Path(bundle) / "manifest.json").write_text(json.dumps(man, indent=2))


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(Path(path).read_bytes())
    i = min(int(len(data) * where), len(data) - 1)
    data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def tree_state(path: Path) -> dict[str, bytes]:
    """{relative path: content} of everything under `path`, directories as b'<dir>'."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (b"<dir>" if p.is_dir() else p.read_bytes()) for p in sorted(path.rglob("*"))}


__all__ = ["_one_torch_thread", "torch_threads", "GRAPHS", "MAX_BATCH", "OPT_BATCH", "train_cli", "export_cli", "run_cli", "call", "error_lines",
           "get_run", "get_bundle", "get_model", "toy8_train_dir", "shapes_train_dir", "toy8_bundle",
           "shapes_bundle", "toy8_net", "shapes_net", "sha256", "copy_bundle", "read_manifest", "write_manifest",
           "flip_byte", "tree_state"]
