"""What every benchmark shares, so that each script stays about its own question (after diffusers'
`benchmarks/benchmarking_utils.py`):

    machine_name, cpu_isa   the machine a result was measured on; it is in every result file's name
    child, script           a command in its own process, measured: wall time, peak RSS, its stdout
    timed                   warm-up, then timed runs of a callable
    sample_draws            given draws through the one Pipeline, in one model call (what a row times)
    Target                  one target: what is asked, the value measured, met or not, and its line
    add_options             the options every benchmark takes: --out-dir, --machine (and --quick)
    Results                 result files <benchmark>[-<variant>]-<machine>.{json,txt,png}, written atomically
    pyplot, save_figure     charts: headless matplotlib, and a chart's common ending

Imports numpy and torch-free helpers only: the measured children import it too, and a child that does not
need torch must not pay for it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from discodiff.atomic import atomic_savefig, atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MACHINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


# ---------------------------------------------------------------------------------------------
# The machine


def slug(text: str) -> str:
    """'AMD EPYC 7B13' -> 'amd-epyc-7b13': lower case, runs of anything else one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_isa() -> str:
    """'avx512', 'avx2' or 'no-avx2': what PyTorch's and ONNX Runtime's CPU kernels can use here."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no-avx2"


def machine_name(gpu: str | None = None) -> str:
    """CPU model + cores, e.g. amd-epyc-2c; without AVX-512 the ISA is added (amd-epyc-2c-avx2): the same
    model name covers machines 2-3x apart. `gpu` (a device name) is appended for rows that ran on it."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1] for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    isa = cpu_isa()
    name = f"{slug(cpu)}-{os.cpu_count()}c" + ("" if isa in ("avx512", "unknown") else f"-{isa}")
    return name + (f"-{slug(gpu)}" if gpu else "")


def machine_arg(text: str) -> str:
    """--machine: a name that can stand in a file name as it is."""
    if not MACHINE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} cannot name a results file; use letters, digits, '.', '_' "
                                         "and '-' (at most 64)")
    return text


# ---------------------------------------------------------------------------------------------
# Measured children and timed calls


def script(name: str, *args) -> list[str]:
    """The command that runs benchmarks/<name> with this interpreter."""
    return [sys.executable, str(HERE / name), *map(str, args)]


def child(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` in its own process and measure it: {wall_s, peak_rss_mib (from wait4), stdout}. A non-zero
    exit raises RuntimeError whose last line is the child's last line of stderr (its own error). Output
    goes to temporary files, not pipes: a pipe nobody reads while we wait would fill and block the child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {(stderr.strip() or stdout.strip())[-1500:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": stdout}


def timed(fn: Callable, repeats: int, warmup: int = 1, sync: Callable = lambda: None) -> tuple[list[float], object]:
    """(seconds of each of `repeats` calls of fn after `warmup` untimed ones, the last result); `sync`
    waits for a device after each call (CUDA work is asynchronous)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return ts, out


def sample_draws(pipe, draws, *, solver: str, sigmas: np.ndarray, **options):
    """`draws` through `pipe` (a `discodiff.runtime.Pipeline`) in one model call, on these levels: the
    `Samples`. Rows of a benchmark differ in the model or the levels, never in how a batch is cut; a
    non-finite sample is kept and measured, not raised (a few-call failure is a result here)."""
    return pipe(draws=draws, solver=solver, sigmas=sigmas, batch=len(draws.seeds), nonfinite="keep", **options)


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    """One target: what is asked (`name`, the threshold in words), the value measured, whether it is met;
    `detail` holds the figures behind the value. In the JSON: {"target", "value", "met", **detail}."""

    name: str
    value: float
    met: bool
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.met = bool(self.met)

    def to_dict(self) -> dict:
        return {"target": self.name, "value": self.value, "met": self.met, **self.detail}

    def line(self, fmt: str = ".3g") -> str:
        """'[met] name: value' or '[NOT met] name: value', the line every report ends with."""
        return f"[{'met' if self.met else 'NOT met'}] {self.name}: {self.value:{fmt}}"


# ---------------------------------------------------------------------------------------------
# Options and result files


def add_options(ap: argparse.ArgumentParser, quick: str | None = None,
                machine: str = "CPU model + cores") -> None:
    """The options every benchmark takes; --quick (a smoke run) where `quick` says what it does."""
    ap.add_argument("--out-dir", type=Path, default=RESULTS,
                    help="where the result files go (default: benchmarks/results)")
    ap.add_argument("--machine", type=machine_arg, default=None, help=f"name in the result files (default: {machine})")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)


def _plain(o):
    """What json cannot write by itself: targets, numpy scalars and arrays, paths."""
    if isinstance(o, Target):
        return o.to_dict()
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to a results file")


@dataclass(frozen=True)
class Results:
    """A benchmark's result files: <out_dir>/<benchmark>[-<variant>]-<machine>.<suffix>, the machine
    always in the name (a result means nothing without where it was measured)."""

    out_dir: Path
    benchmark: str
    machine: str

    def path(self, suffix: str, variant: str = "") -> Path:
        name = "-".join(part for part in (self.benchmark, variant, self.machine) if part)
        return Path(self.out_dir) / f"{name}.{suffix}"

    def write(self, report: dict, text: str | None = None, variant: str = "", indent: int = 1) -> Path:
        """The report as JSON (with "machine" first if it has none) and `text` (if given) as .txt beside it,
        each written atomically (a killed run leaves the former file, never half a file); returns the
        JSON's path."""
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        path = self.path("json", variant)
        report = report if "machine" in report else {"machine": self.machine, **report}
        atomic_write_text(path, json.dumps(report, indent=indent, default=_plain) + "\n")
        if text is not None:
            atomic_write_text(self.path("txt", variant), text + "\n")
        return path

    def publish(self, report: dict, text: str, variant: str = "", chart: Callable | None = None,
                indent: int = 1) -> Path:
        """A benchmark's ending: the table printed, the JSON and .txt written, `chart(report, png path)` drawn."""
        print(text)
        path = self.write(report, text, variant, indent)
        if chart is not None:
            chart(report, self.path("png", variant))
        return path


def pyplot():
    """matplotlib.pyplot without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, title: str | None = None) -> None:
    """A chart's ending: its title, a tight layout, the PNG written atomically, the figure freed."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    pyplot().close(fig)
