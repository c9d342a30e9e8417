"""Peak memory of discodiff-run against the number of samples: draws are made per batch and results
streamed to disk, so --n 300000 should peak like --n 1000.

    python benchmarks/memory.py                       # runs/shapes/bundle, n = 1000 and 300000
    python benchmarks/memory.py --n 1000,30000 --quick

Each run is its own child process (peak RSS from wait4), with one denoiser call per sample (Euler, one
level: memory, not quality, is measured here) into a temporary --out that is removed afterwards.
Writes benchmarks/results/memory[-quick]-<machine>.{json,txt}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from discodiff.benchmarks.common import Results, Target, add_options, child, machine_name


def peak_of_run(bundle: Path, n: int, batch: int, work: Path) -> dict:
    out = work / f"out-{n}"
    cmd = [str(Path(sys.executable).parent / "discodiff-run"), "--bundle", str(bundle), "--n", str(n), "--batch",
           str(batch), "--solver", "euler", "--steps", "1", "--out", str(out), "--quiet"]
    run = child(cmd)
    files = sum(1 for _ in os.scandir(out))
    shutil.rmtree(out)
    return {"n": n, "peak_rss_mib": run["peak_rss_mib"], "wall_s": run["wall_s"], "files": files}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/shapes/bundle"))
    ap.add_argument("--n", default="1000,300000", help="sample counts, the smallest is the reference")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="where the outputs go while measured (default: a temp dir)")
    add_options(ap, quick="n = 100 and 2000")
    a = ap.parse_args()
    counts = [100, 2000] if a.quick else sorted(int(v) for v in a.n.split(","))
    if not (a.bundle / "manifest.json").exists():
        print(f"memory.py: error: bundle {a.bundle} not found; run discodiff-train and discodiff-export first",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        rows = []
        for n in counts:
            print(f"discodiff-run --n {n} ...", flush=True)
            rows.append(peak_of_run(a.bundle, n, a.batch, Path(tmp)))
    ref = rows[0]["peak_rss_mib"]
    for r in rows:
        r["vs_smallest"] = r["peak_rss_mib"] / ref
    top = rows[-1]
    rep = {"machine": a.machine or machine_name(), "bundle": str(a.bundle), "batch": a.batch, "rows": rows,
           "target": Target(f"--n {top['n']} peaks within 1.2x of --n {rows[0]['n']}", top["vs_smallest"],
                            top["vs_smallest"] <= 1.2)}
    lines = [f"discodiff-run peak memory on {rep['machine']} ({a.bundle}, batch {a.batch}, Euler 1 call per sample)",
             f"{'n':>8} {'peak RSS MiB':>13} {'x smallest':>10} {'wall s':>8} {'files':>8}"]
    lines += [f"{r['n']:>8} {r['peak_rss_mib']:13.1f} {r['vs_smallest']:10.3f} {r['wall_s']:8.1f} {r['files']:>8}" for r in rows]
    lines.append(rep["target"].line(".3f"))
    Results(a.out_dir, "memory", rep["machine"]).publish(rep, "\n".join(lines), "quick" if a.quick else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
