"""Atomic file writes, temp names that can be reclaimed, and hashing. Torch-free: training, export and
the runtime all use it.

A file is written to a temp name in its own directory, fsynced, then renamed over the target, so a
reader sees the old file or the new one, never half of one, and an interrupted write leaves nothing.
Temp names carry the writer's PID (`.<stem>.<pid>.<random><suffix>.tmp`, `<prefix><pid>-<random>`), so
what a killed process left behind is recognised and removed by the next run (`reclaim`), while the
temp files of a process that is still running are left alone.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e   # name the file the user asked for, not the temp
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_savefig(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG through a temp file, so a stopped run leaves no half image."""
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


def temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh hidden directory `<prefix><pid>-<random>` in `parent` (made first, so an unwritable
    location fails here, before any work)."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    except OSError as e:
        if e.errno is None or e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(parent)) from e


def alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def reclaim(parent: Path, prefix: str) -> list[Path]:
    """Remove entries `<prefix><pid>...` of `parent` whose writing process no longer runs; returns them.
    For atomic_write's files pass prefix `.<stem>.`; for temp_dir's directories the prefix given there."""
    parent, removed = Path(parent), []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        head = entry.name[len(prefix):].split(".", 1)[0].split("-", 1)[0]
        if not head.isdigit() or int(head) == os.getpid() or alive(int(head)):
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
