"""Shared fixtures: tiny training runs made once per session through the real in-process CLI."""
from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from discodiff.cli_util import run
from discodiff.train import cli as train_cli

VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def train(*args: str) -> int:
    """Run `discodiff-train ARGS` in this process; returns the exit code."""
    return run(train_cli.command, args=[str(a) for a in args], prog="discodiff-train")


def tree_digest(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` ({} when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def toy8_run(tmp_path_factory) -> Path:
    """A finished toy8-tiny run (20 stage-1 steps, 10 prior steps)."""
    out = tmp_path_factory.mktemp("toy8") / "run"
    assert train("--preset", "toy8-tiny", "--out", out, "--quiet") == 0
    return out


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory) -> Path:
    """A finished shapes-tiny run (8x8 RGB, 3 classes, m=2 latents)."""
    out = tmp_path_factory.mktemp("shapes") / "run"
    assert train("--preset", "shapes-tiny", "--out", out, "--quiet") == 0
    return out


@pytest.fixture(scope="session")
def toy8_model(toy8_run):
    from discodiff.checkpoint import load_model

    return load_model(toy8_run / "model.safetensors")[0]


@pytest.fixture(scope="session")
def shapes_model(shapes_run):
    from discodiff.checkpoint import load_model

    return load_model(shapes_run / "model.safetensors")[0]
