"""The README's two commands, timed as a new user runs them: a fresh clone of this repository's HEAD, then
the demo command (venv, installs, train, export, run, latency) and the test command, phase by phase.

    python benchmarks/demo_timing.py                       # both commands, on this machine as it is
    python benchmarks/demo_timing.py --only demo
    python benchmarks/demo_timing.py --cpu-quota 0.87      # emulate a slower 2-core machine (root, cgroups)
    python benchmarks/demo_timing.py --dry-run             # print the phases read from README.md

The phases are the README's own `&&`-joined parts, run in one shell (so `. .venv/bin/activate` holds),
with a timestamp after each. The training's stage-1 seconds per step (steps 50 -> 250 of the demo run's
metrics.jsonl) are recorded too: the one number to compare machines by (the AVX2-only AMD EPYC was
measured at 0.43 s/step on the former 3000-step default, same network and batch).

--cpu-quota F puts the whole run in a CPU cgroup limited to F CPUs in total (cgroup v1 cfs_quota_us or v2
cpu.max): a stand-in for a slower machine, calibrated by that stage-1 rate. It slows work that keeps both
cores busy by about 2/F, single-threaded work by less (one thread may use up to F of a core), so it
under-states a uniformly slower CPU for single-threaded phases. The results say which it was.

Writes benchmarks/results/demo-timing[-quota<F>, 0.87 as 0p87][-demo|-tests]-<machine>.{json,txt}; the clone is
removed afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from discodiff.benchmarks.common import HERE, Results, add_options, cpu_isa, machine_name
from discodiff.train.metrics import read_metrics

ROOT = HERE.parent

MARK = "@@demo-timing"


def readme_commands(readme: Path) -> dict[str, list[str]]:
    """{'demo': phases, 'tests': phases}: the first two ```bash blocks after '## Two commands'."""
    text = readme.read_text()
    section = text[text.index("## Two commands"):]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    if len(blocks) < 2:
        raise SystemExit("demo_timing.py: error: README.md has no two ```bash blocks under '## Two commands'")
    return {name: [p.strip() for p in block.strip().split(" && ")] for name, block in zip(("demo", "tests"), blocks)}


def cgroup(quota: float, tag: str) -> Path:
    """A CPU cgroup limited to `quota` CPUs; returns the file a PID is written to."""
    period = 100_000
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        g = v1 / tag
        g.mkdir(exist_ok=True)
        (g / "cpu.cfs_period_us").write_text(str(period))
        (g / "cpu.cfs_quota_us").write_text(str(int(quota * period)))
        return g / "cgroup.procs"
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists():
        g = v2 / tag
        g.mkdir(exist_ok=True)
        (g / "cpu.max").write_text(f"{int(quota * period)} {period}")
        return g / "cgroup.procs"
    raise OSError("no cgroup v1 cpu controller or cgroup v2 hierarchy under /sys/fs/cgroup")


def run_phases(phases: list[str], cwd: Path, log: Path, procs_file: Path | None) -> dict:
    """Run the phases in one bash (stopping at the first failure); seconds per phase from the marks."""
    script = "".join(f"{p} && echo {MARK} {i} $(date +%s.%N) && " for i, p in enumerate(phases)) + "true"
    pre = f"echo $$ > {procs_file} && " if procs_file else ""
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(["bash", "-c", pre + script], cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    marks = {int(i): float(t) for i, t in re.findall(rf"^{MARK} (\d+) ([\d.]+)$", log.read_text(), flags=re.M)}
    rows, last = [], t0
    for i, p in enumerate(phases):
        if i in marks:
            rows.append({"phase": p, "seconds": round(marks[i] - last, 1)})
            last = marks[i]
        else:
            rows.append({"phase": p, "seconds": None})
    return {"rc": rc, "wall_s": round(wall, 1), "phases": rows}


def stage1_rate(run: Path) -> float | None:
    """Seconds per stage-1 step between steps 50 and 250 of a run's metrics.jsonl."""
    t = {r["step"]: r.get("time") for r in read_metrics(run / "metrics.jsonl") if r["stage"] == 1}
    return round((t[250] - t[50]) / 200, 4) if t.get(50) is not None and t.get(250) is not None else None


def table(rep: dict) -> str:
    q = rep["cpu_quota"]
    lines = [f"README commands on {rep['machine']} ({rep['isa']}, {rep['cores']} cores)"
             + (f", inside a cgroup limited to {q} CPUs (an emulation of a slower machine)" if q else ""),
             f"commit {rep['commit']}; stage-1 training rate: {rep['stage1_s_per_step']} s/step (steps 50-250)", ""]
    for name, r in rep["commands"].items():   # (setup: the demo's install phases, when only the tests ran)
        lines.append(f"{name}: {r['wall_s']:.0f} s = {r['wall_s'] / 60:.1f} min, exit code {r['rc']}")
        lines += [f"  {('%7.1f s' % p['seconds']) if p['seconds'] is not None else '    -    '}  {p['phase']}"
                  for p in r["phases"]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["demo", "tests", "both"], default="both")
    ap.add_argument("--cpu-quota", type=float, default=None, help="limit the run to this many CPUs in total (root)")
    add_options(ap)
    ap.add_argument("--keep", action="store_true", help="keep the fresh clone (printed at the end)")
    ap.add_argument("--dry-run", action="store_true", help="print the phases and stop")
    a = ap.parse_args()
    commands = readme_commands(ROOT / "README.md")
    names = ["demo", "tests"] if a.only == "both" else [a.only]
    if names == ["tests"]:   # the test command runs in the demo's virtual environment: make it first (timed apart)
        commands["setup"] = [p for p in commands["demo"][:4] if "venv" in p or "pip install" in p]
        names = ["setup", "tests"]
    if a.dry_run:
        for n in names:
            print(f"{n}:\n" + "\n".join(f"  {p}" for p in commands[n]))
        return 0
    if a.cpu_quota is not None and not 0.05 <= a.cpu_quota <= (os.cpu_count() or 1):
        print(f"demo_timing.py: error: --cpu-quota {a.cpu_quota} is outside 0.05..{os.cpu_count()} CPUs", file=sys.stderr)
        return 2
    try:                                     # an unwritable --out-dir fails now, not after the runs
        a.out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=a.out_dir, prefix=".demo-timing-probe-"):
            pass
    except OSError as e:
        print(f"demo_timing.py: error: cannot write results to --out-dir {a.out_dir} ({e.strerror}); choose a "
              "writable folder", file=sys.stderr)
        return 2
    procs = None
    if a.cpu_quota:
        try:
            procs = cgroup(a.cpu_quota, f"discodiff-demo-timing-{os.getpid()}")
        except OSError as e:
            print(f"demo_timing.py: error: cannot make a CPU cgroup for --cpu-quota ({e}); run as root on Linux "
                  "or drop --cpu-quota", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="discodiff-demo-timing-"))
    clone = work / "clone"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                text=True).stdout.strip()
        results = {}
        for n in names:
            print(f"{n}: {len(commands[n])} phases in {clone} ...", flush=True)
            results[n] = run_phases(commands[n], clone, work / f"{n}.log", procs)
            print(f"  {results[n]['wall_s']:.0f} s, exit code {results[n]['rc']}", flush=True)
            if results[n]["rc"] != 0:
                print((work / f"{n}.log").read_text()[-3000:], file=sys.stderr)
        base = a.machine or machine_name()
        rep = {"machine": base, "isa": cpu_isa(), "cores": os.cpu_count(), "cpu_quota": a.cpu_quota,
               "commit": commit, "stage1_s_per_step": stage1_rate(clone / "runs" / "shapes"), "commands": results}
        quota = [f"quota{a.cpu_quota:g}".replace(".", "p")] if a.cpu_quota else []     # 0.87 -> quota0p87
        variant = "-".join(quota + ([] if a.only == "both" else [a.only]))
        path = Results(a.out_dir, "demo-timing", base).publish(rep, table(rep), variant)
        print(f"\nwrote {path} and .txt")
        return 0 if all(r["rc"] == 0 for r in results.values()) else 1
    finally:
        if a.keep:
            print(f"kept {clone}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if procs is not None:
            try:
                procs.parent.rmdir()      # empty once every process in it has exited
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
