"""Helpers the tests share: the CLIs run in-process, output capture, and small file helpers.

Fixtures (the session cache of tiny runs and bundles) are in conftest.py; this module holds plain
functions, imported as `from tests.helpers import ...`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from discodiff.cli_util import run

GRAPHS = ("denoiser", "denoiser_fp16", "encoder", "prior_step", "prior_recompute")
MAX_BATCH, OPT_BATCH = 8, 4          # the tiny bundles' export sizes
PRESETS = {"toy8": "toy8-tiny", "shapes": "shapes-tiny"}
VENV_BIN = Path(sys.executable).parent   # console scripts (discodiff-*, torchrun) of the interpreter under test


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


def one_error_line(rc: int, err: str, prog: str, *words: str) -> str:
    """Assert the bad-input contract: exit 2, exactly one line `prog: error: ...` naming `words`."""
    lines = error_lines(err)
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error:"), lines[0]
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


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


# ---------------------------------------------------------------------------------------------- files


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_tree(src: Path, dst: Path) -> Path:
    """A copy of a run or bundle to change."""
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


def tree_digest(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` ({} when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}


def hidden_leftovers(parent: Path) -> list[str]:
    """Hidden temp files or folders (names starting with '.') anywhere under `parent`."""
    return sorted(str(p.relative_to(parent)) for p in Path(parent).rglob(".*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- full disks


def fill_to(fs: Path, free: int) -> None:
    """Fill the file system at `fs` so that about `free` bytes stay available."""
    st = os.statvfs(fs)
    avail = st.f_bavail * st.f_frsize
    (Path(fs) / "filler").write_bytes(b"\0" * max(avail - free, 0))


def enospc(monkeypatch, match: str) -> list[str]:
    """From now on os.fsync raises ENOSPC (as a full disk does for buffered writes) for the first file
    whose path contains `match`; returns the list of paths it failed, to check the site was reached."""
    hit: list[str] = []
    real = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not hit and match in os.path.basename(path):
            hit.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hit


def raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def unwritable(kind: str, tmp_path: Path, small_fs: Path | None = None) -> Path:
    """An output path that cannot be written: under /proc, below a file, or on a read-only file system."""
    if kind == "proc":
        return Path("/proc/discodiff-test/out")
    if kind == "file_as_folder":
        (tmp_path / "a_file").write_text("x")
        return tmp_path / "a_file" / "out"
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    return small_fs / "out"
