"""Peak memory of discodiff-run against the number of samples: draws are made per batch and results
streamed to disk, so --n 300000 should peak like --n 1000.

    python benchmarks/memory.py                       # runs/shapes/bundle, n = 1000 and 300000
    python benchmarks/memory.py --n 1000,30000 --quick

Each run is its own child process (peak RSS from wait4), with one denoiser call per sample (Euler, one
level: memory, not quality, is measured here) into a temporary --out that is removed afterwards.
Writes benchmarks/results/memory-<machine>.{json,txt}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from discodiff.atomic import atomic_write_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import measured  # noqa: E402
from latency import machine_name  # noqa: E402


def peak_of_run(bundle: Path, n: int, batch: int, work: Path) -> dict:
    out = work / f"out-{n}"
    cmd = [str(Path(sys.executable).parent / "discodiff-run"), "--bundle", str(bundle), "--n", str(n), "--batch",
           str(batch), "--solver", "euler", "--steps", "1", "--out", str(out), "--quiet"]
    run = measured(cmd)
    files = sum(1 for _ in os.scandir(out))
    shutil.rmtree(out)
    return {"n": n, "peak_rss_mib": run["peak_rss_mib"], "wall_s": run["wall_s"], "files": files}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/shapes/bundle"))
    ap.add_argument("--n", default="1000,300000", help="sample counts, the smallest is the reference")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="where the outputs go while measured (default: a temp dir)")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--machine", default=None)
    ap.add_argument("--quick", action="store_true", help="n = 100 and 2000")
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
           "target": {"target": f"--n {top['n']} peaks within 1.2x of --n {rows[0]['n']}", "value": top["vs_smallest"],
                      "met": top["vs_smallest"] <= 1.2}}
    lines = [f"discodiff-run peak memory on {rep['machine']} ({a.bundle}, batch {a.batch}, Euler 1 call per sample)",
             f"{'n':>8} {'peak RSS MiB':>13} {'x smallest':>10} {'wall s':>8} {'files':>8}"]
    lines += [f"{r['n']:>8} {r['peak_rss_mib']:13.1f} {r['vs_smallest']:10.3f} {r['wall_s']:8.1f} {r['files']:>8}" for r in rows]
    t = rep["target"]
    lines.append(f"[{'met' if t['met'] else 'NOT met'}] {t['target']}: {t['value']:.3f}")
    text = "\n".join(lines)
    print(text)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stem = a.out_dir / f"memory-{rep['machine']}{'-quick' if a.quick else ''}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(rep, indent=1) + "\n")
    atomic_write_text(stem.with_suffix(".txt"), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
