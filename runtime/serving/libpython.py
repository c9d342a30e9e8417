"""Make Triton's Python-backend stub load this interpreter's own libpython.

PyTriton ships one `triton_python_backend_stub` per Python minor version. It needs libpython3.X.so.1.0
and its RPATH does not provide one, so the loader takes LD_LIBRARY_PATH, then the system's library
cache: on a machine whose `python3` is a separate build (pyenv's 3.11.7 next to Debian's 3.11.2), the
stub runs the system's C core with the virtual environment's standard library, and the model fails to
load ('_thread.RLock' object has no attribute '_recursion_count'). PyTriton hands tritonserver (and so
the stub) a copy of os.environ, so putting a private folder that holds only a link to *this*
interpreter's libpython first on LD_LIBRARY_PATH, before the server starts, fixes it without a re-exec
or a library path set by hand. Where that cannot work (a Python built without a shared libpython), the
server stops with one line saying what to do.
"""
from __future__ import annotations

import atexit
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

_SHIMS: list[str] = []      # private folders made here, removed at exit (or by a server ending hard)
_VERSION_PROBE = ("import ctypes,sys;f=ctypes.CDLL(sys.argv[1]).Py_GetVersion;f.restype=ctypes.c_char_p;"
                  "print(f().decode().split()[0])")


class LibpythonMismatch(RuntimeError):
    """The stub would run another Python than this one, and it cannot be fixed here."""


def _soname() -> str:
    return sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"


def remove_shims() -> None:
    """Remove the folders ensure_stub_libpython made (atexit does it; a server ending with os._exit calls it)."""
    while _SHIMS:
        shutil.rmtree(_SHIMS.pop(), ignore_errors=True)


def stub_path() -> str:
    from pytriton.utils.distribution import get_stub_path

    return str(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))


def resolved_libpython(binary: str, ld_library_path: str | None) -> str | None:
    """The libpython the dynamic loader picks for `binary` under this LD_LIBRARY_PATH (ldd)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if ld_library_path:
        env["LD_LIBRARY_PATH"] = ld_library_path
    try:
        out = subprocess.run(["ldd", binary], env=env, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^\s*libpython\S*\s+=>\s+(/\S+)", out, re.M)
    return os.path.realpath(m.group(1)) if m else None


def libpython_version(path: str) -> str | None:
    """"3.11.7" for a libpython, read in a child process (never loaded into this one)."""
    try:
        r = subprocess.run([sys.executable, "-c", _VERSION_PROBE, path], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def own_libpython() -> list[str]:
    """This interpreter's shared libpython: mapped into this process, else LIBDIR/INSTSONAME."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            found += [os.path.realpath(line.split()[-1]) for line in f if "/libpython" in line.split()[-1]]
    except OSError:
        pass
    for d in (sysconfig.get_config_var("LIBDIR"), os.path.join(sys.base_prefix, "lib")):
        if d and os.path.exists(os.path.join(d, _soname())):
            found.append(os.path.realpath(os.path.join(d, _soname())))
    return list(dict.fromkeys(found))


def ensure_stub_libpython() -> str:
    """Check, and fix if needed, which libpython the stub will load; one line on what was found. Raises
    LibpythonMismatch (one line: what, why, what to do) where it cannot be fixed. Call before Triton starts."""
    want, stub = platform.python_version(), stub_path()
    if not os.path.exists(stub):
        raise LibpythonMismatch(f"nvidia-pytriton has no Python-backend stub for Python {sys.version_info[0]}."
                                f"{sys.version_info[1]}; use Python 3.8-3.13")
    old = os.environ.get("LD_LIBRARY_PATH")
    got = resolved_libpython(stub, old)
    if got and libpython_version(got) == want:
        return f"libpython: the stub loads {got} (Python {want}), this interpreter's"
    mine = next((p for p in own_libpython() if libpython_version(p) == want), None)
    if mine is None:
        raise LibpythonMismatch(
            f"Triton's Python stub would load {got or 'no ' + _soname()} ({libpython_version(got) if got else '?'}) but "
            f"this is Python {want} ({sys.executable}) and it has no shared {_soname()}; make the virtual environment "
            "from a Python built with --enable-shared (e.g. the system's /usr/bin/python3)")
    shim = tempfile.mkdtemp(prefix="discodiff-libpython-")
    os.symlink(mine, os.path.join(shim, _soname()))
    if not _SHIMS:
        atexit.register(remove_shims)
    _SHIMS.append(shim)
    path = shim + (":" + old if old else "")
    if libpython_version(resolved_libpython(stub, path) or "") != want:
        raise LibpythonMismatch(f"could not make Triton's Python stub load {mine} (Python {want}); set LD_LIBRARY_PATH "
                                f"to {os.path.dirname(mine)} and start again")
    os.environ["LD_LIBRARY_PATH"] = path
    return f"libpython: the stub would load {got} ({libpython_version(got) if got else '?'}); now {mine} (Python {want})"
