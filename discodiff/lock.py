"""One writer per directory: an exclusive lock on a run directory or a bundle that a killed process
never leaves stuck. Torch-free (the runtime's discodiff-fit takes it too).

The lock is `flock` on a file named LOCK_FILE inside the directory it guards. The kernel drops an flock
when its holder exits, however it exits (SIGKILL, OOM), so a file a killed run left behind blocks
nobody: the next writer simply locks it again. It lives inside, not beside, the directory: a command
then writes nothing outside the paths the user named (a bundle's or a run's parent may not even be
writable), and `rundir` and `export.bundle.check_destination` know the name as the directory's own.

The holder writes "<pid> <program>" into the file, so a refused command can name it. On release the
holder removes the file. That is safe because every taker, once it holds the flock, checks that the
path still names the very file it locked and starts over if not (the file was removed or, for a bundle
that an export replaced, belongs to the old directory). flock works across NFS clients on Linux >= 2.6.12.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from discodiff.atomic import alive
from discodiff.errors import UserError

LOCK_FILE = ".discodiff.lock"
# A bundle's manifest rewrite holds the lock for milliseconds; a holder that keeps it this long is stuck.
BUNDLE_WAIT_S = 30.0
_POLL_S = 0.05


def _recorded(directory: Path) -> tuple[int, str] | None:
    """(pid, program) as the lock file of `directory` records them, if it does."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            text = os.read(fd, 200).decode("utf-8", "replace").split()
        finally:
            os.close(fd)
    except OSError:
        return None
    return (int(text[0]), text[1]) if len(text) >= 2 and text[0].isdigit() else None


def holder(directory: Path) -> str:
    """Who holds the lock of `directory`, as its lock file says: "discodiff-train (pid 123)"."""
    rec = _recorded(directory)
    return f"{rec[1]} (pid {rec[0]})" if rec else "another process (pid not yet recorded)"


def live_holder(directory: Path) -> str | None:
    """`holder(directory)` if its lock file names a process that is running, else None. Reads only, so a
    command can tell "busy" before it writes anything; `DirLock.acquire` is what decides (a file a killed
    holder left names a dead pid, and the flock it held is gone)."""
    rec = _recorded(directory)
    return f"{rec[1]} (pid {rec[0]})" if rec and alive(rec[0]) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class DirLock:
    """`with DirLock(dir, "discodiff-fit", busy="...").acquire(wait=...):` -- the directory is ours inside.

    `busy` completes the refusal "<dir> is being written by <holder>; <busy>" (what to do)."""

    def __init__(self, directory: Path, program: str, busy: str):
        self.directory, self.path = Path(directory), Path(directory) / LOCK_FILE
        self.program, self.busy = program, busy
        self.fd: int | None = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:   # never written through a link
                raise UserError(f"{self.path} is a symbolic link, which is never followed; remove it and run "
                                "again") from None
            raise OSError(e.errno, e.strerror, str(self.directory)) from None   # the folder the user named

    def acquire(self, wait: float = 0.0, on_wait=None) -> "DirLock":
        """Take the lock, waiting up to `wait` seconds for a holder to finish (`on_wait(message)` is told
        once); else one UserError line naming the holder."""
        deadline, told = time.monotonic() + wait, False
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                who = holder(self.directory)
                if time.monotonic() >= deadline:
                    raise UserError(f"{self.directory} is being written by {who}; {self.busy}") from None
                if on_wait is not None and not told:
                    on_wait(f"waiting for {who}, which is writing {self.directory} ...")
                    told = True
                time.sleep(_POLL_S)
                continue
            if not _same_file(fd, self.path):   # removed or replaced since we opened it: take the new one
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {self.program}\n".encode())
            except OSError:   # a full disk: the flock holds all the same; the command's own writes will say so
                pass
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):   # still ours (not a replaced bundle's new file): remove it
                self.path.unlink()
        except OSError:
            pass                                  # a read-only or vanished folder: the flock still goes
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirLock":
        if self.fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
