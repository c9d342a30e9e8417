"""How many CPU threads the runtime uses, and whether idle ones spin: chosen from how busy the machine
is when the runtime starts (`auto`), or as asked.

ONNX Runtime's intra-op pool is fastest alone with every core and spinning workers (between two ops a
worker spins instead of sleeping: measured in benchmarks/latency.py). On a machine where another heavy
process runs (a training run, a second sampler), spinning workers and that process's OpenMP pool fight
for the same cores and both collapse (a training run next to discodiff-run was measured 20x slower).
`auto` therefore samples how many other tasks are runnable right now (/proc/stat procs_running, a few
samples over ~40 ms): none -> every core, spinning; some -> only the free cores (at least one), no
spinning. The choice and its reason are reported (timing.json, the server's start line).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

SPIN = ("auto", "on", "off")


@dataclass(frozen=True)
class CpuPolicy:
    """The CPU policy a run uses: ONNX Runtime's intra-op threads, whether idle ones spin, and why."""

    threads: int
    spinning: bool
    reason: str                 # one line, e.g. "auto: 0 other runnable task(s) on 2 core(s) at start (...)"

    def describe(self) -> dict:
        """{"threads", "spinning", "cpu_policy"}, as timing.json and the server report it."""
        return {"threads": self.threads, "spinning": self.spinning, "cpu_policy": self.reason}


def cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_running() -> int:
    """Runnable threads of this process (an OpenMP pool still spinning after torch work counts in
    procs_running too, and is not another process)."""
    n = 0
    try:
        for task in os.scandir("/proc/self/task"):
            try:
                with open(f"{task.path}/stat") as f:
                    n += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except (OSError, IndexError):
                pass
    except OSError:
        return 1
    return max(n, 1)


def busy_elsewhere(samples: int = 5, interval: float = 0.008) -> float:
    """Runnable tasks other than this process's own threads, median of a few samples of /proc/stat (0 where
    unknown)."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
        except (OSError, StopIteration, ValueError):
            return 0.0
        counts.append(max(running - _own_running(), 0))
        if i + 1 < samples:
            time.sleep(interval)
    counts.sort()
    return float(counts[len(counts) // 2])


def free_cores(busy: float) -> int:
    """The cores left for us when `busy` other tasks are runnable: all on an idle machine, else at least one."""
    n = cores()
    return n if busy < 1 else max(1, n - int(round(busy)))


def cpu_policy(threads: int | None = None, spin: str = "auto", busy: float | None = None) -> CpuPolicy:
    """The runtime's threads and spinning: explicit where given, else from the machine's load.

    Args:
        threads: intra-op threads, or None (auto: the free cores; "on" / "off": every core).
        spin: "auto" (spin only on an idle machine), "on" or "off".
        busy: other runnable tasks, measured by `busy_elsewhere` when None and spin is "auto".
    """
    n = cores()
    busy = busy_elsewhere() if busy is None and spin == "auto" else (busy or 0.0)
    if threads is None:                 # only auto adapts the threads; on / off mean every core
        threads = free_cores(busy) if spin == "auto" else n
    spinning = spin == "on" or (spin == "auto" and busy < 1)
    reason = (f"{'auto' if spin == 'auto' else 'spin ' + spin}: {busy:g} other runnable task(s) on {n} core(s) at start"
              + (" (alone: all cores, spinning)" if busy < 1 else " (shared: free cores only, no spinning)"))
    return CpuPolicy(threads, spinning, reason)
