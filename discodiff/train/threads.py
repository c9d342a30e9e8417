"""How many CPU threads a training run uses: the same load rule as the runtime (runtime/cpu.py), applied
so that `--resume` stays bit-exact.

PyTorch's CPU kernels split reductions by thread, so the thread count changes the weights (measured: 10
shapes steps at 1 vs 2 threads differ by up to 3.5e-6). A run therefore keeps one count:

    auto (default)   the free cores when the run starts (all of them on an idle machine), kept for the run;
                     `--resume` reuses the count saved with the state, whatever the load is then
    --threads N      N threads
    OMP_NUM_THREADS  respected where set and no --threads is given (torchrun sets it for CPU ranks)
    --share-cores    re-decided between steps from the load (a sampler starting next to the run takes a
                     core, the run gives it up and takes it back when it ends); faster on a shared
                     machine, but the weights then depend on the load, so a resumed run is no longer
                     bit-identical to an uninterrupted one

Why it matters: two thread pools spinning on two cores fight; a training run next to a sampler went 20x
slower, and with the sampler yielding (runtime/cpu.py) still about 4x (benchmarks/latency_shared.py).
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from discodiff.runtime.cpu import busy_elsewhere, cores, free_cores


@dataclass
class ThreadPolicy:
    threads: int
    reason: str
    share: bool = False
    probe: Callable[[], float] = field(default=lambda: busy_elsewhere(samples=1), repr=False)  # other runnable tasks now
    _recent: deque = field(default_factory=lambda: deque(maxlen=9), repr=False)

    def apply(self) -> "ThreadPolicy":
        torch.set_num_threads(self.threads)
        return self

    def between_steps(self) -> None:
        """--share-cores only: one cheap load sample per step (no sleep); the thread count follows the
        median of the last nine, so a momentary spike does not resize the pool."""
        if not self.share:
            return
        self._recent.append(self.probe())
        if len(self._recent) < self._recent.maxlen:
            return
        want = free_cores(sorted(self._recent)[len(self._recent) // 2])
        if want != self.threads:
            self.threads = want
            torch.set_num_threads(want)


def choose(threads: int | None, share: bool, saved: int | None = None) -> ThreadPolicy:
    """The run's thread policy: --threads, else the count saved with a resumed state, else
    OMP_NUM_THREADS, else the free cores now."""
    n = cores()
    if threads is not None:
        return ThreadPolicy(threads, f"--threads {threads}", share)
    if saved and not share:
        return ThreadPolicy(saved, f"{saved} thread(s) as saved with the run (bit-exact resume)")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isascii() and env.isdigit() and int(env) > 0 and not share:
        return ThreadPolicy(int(env), f"OMP_NUM_THREADS={env} from the environment")
    busy = busy_elsewhere()
    free = free_cores(busy)
    where = f"{busy:g} other runnable task(s) on {n} core(s) at start"
    if share:
        return ThreadPolicy(free, f"--share-cores: follows the load between steps ({where})", True)
    return ThreadPolicy(free, f"auto: {free} thread(s), {where}, kept for the run")
