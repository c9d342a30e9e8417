"""Run a command as a child process and measure it: wall time and peak RSS (from wait4). Its output goes to
temporary files, not pipes: a pipe nobody reads while we wait would fill and block the child."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time


def measured(cmd: list[str]) -> dict:
    """{wall_s, peak_rss_mib, stdout}; a non-zero exit raises with the end of stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {stderr[-1500:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": stdout}
