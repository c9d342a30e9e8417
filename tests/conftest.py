"""The session cache: each tiny run is trained once and each tiny bundle exported once per test session,
through the real in-process CLIs, and shared by every test package. Shared artifacts are read-only by
convention: copy them (tests.helpers.copy_tree) before changing anything.

    toy8:   toy8-tiny   (2-D points, unconditional, m=1, k=8)
    shapes: shapes-tiny (8x8 RGB, 3 classes, m=2, k=4)
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# One CPU thread for every trainer the tests start, in process or not (discodiff/train/threads.py reads it):
# the tiny models gain nothing from more, and a fixed count keeps their weights independent of the load.
os.environ["OMP_NUM_THREADS"] = "1"

from tests.helpers import MAX_BATCH, OPT_BATCH, PRESETS, export_cli, torch_threads, train_cli


class TinyCache:
    def __init__(self, factory):
        self.factory, self.built = factory, {}

    def run(self, name: str) -> Path:
        key = ("run", name)
        if key not in self.built:
            out = self.factory.mktemp(f"run-{name}") / "run"
            with torch_threads(1):
                assert train_cli("--preset", PRESETS[name], "--out", out, "--quiet") == 0, f"training {name} failed"
            self.built[key] = out
        return self.built[key]

    def bundle(self, name: str) -> Path:
        key = ("bundle", name)
        if key not in self.built:
            out = self.run(name) / "bundle"
            with torch_threads(1):
                rc = export_cli("--checkpoint", self.run(name) / "model.safetensors", "--out", out,
                                "--max-batch", MAX_BATCH, "--opt-batch", OPT_BATCH, "--quiet")
            assert rc == 0, f"exporting {name} failed"
            self.built[key] = out
        return self.built[key]

    def model(self, name: str):
        key = ("model", name)
        if key not in self.built:
            from discodiff.checkpoint import load_model

            self.built[key] = load_model(self.run(name) / "model.safetensors")[0].eval()
        return self.built[key]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyCache:
    return TinyCache(tmp_path_factory)


@pytest.fixture
def small_fs(tmp_path):
    """A real 3 MiB file system (tmpfs), for disk-full tests; skipped where mounting is not allowed."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {(proc.stderr or proc.stdout).strip()[:120]}")
    try:
        yield mnt
    finally:
        import gc

        gc.collect()   # memory maps of checkpoints read from it (safetensors) hold the mount busy
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def toy8_run(tiny) -> Path:
    return tiny.run("toy8")


@pytest.fixture(scope="session")
def shapes_run(tiny) -> Path:
    return tiny.run("shapes")


@pytest.fixture(scope="session")
def toy8_bundle(tiny) -> Path:
    return tiny.bundle("toy8")


@pytest.fixture(scope="session")
def shapes_bundle(tiny) -> Path:
    return tiny.bundle("shapes")


@pytest.fixture(scope="session")
def toy8_model(tiny):
    return tiny.model("toy8")


@pytest.fixture(scope="session")
def shapes_model(tiny):
    return tiny.model("shapes")
