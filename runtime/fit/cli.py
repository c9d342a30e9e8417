"""`discodiff-fit`: fit sampling schedules to a bundle's model, in place, without re-exporting.

    discodiff-fit --nfe 5,6,8,10                       # runs/shapes/bundle, the default solver
    discodiff-fit --bundle runs/toy8/bundle --nfe 8 --solver ipndm

Torch-free: the fit runs the bundle's own graphs on ONNX Runtime. The fitted schedules go into the
manifest (sampling.fitted, keyed by the number of denoiser calls, with their held-out error), which is
checked and replaced atomically; the graph files and their hashes are untouched. `discodiff-run --nfe N`
then samples with N calls on the fitted levels.

Two fits of one bundle may run at once: each fits without holding anything, then rewrites the manifest
under the bundle's lock (`update_manifest`), re-reading it there, so neither loses the other's fits. A
bundle re-exported with other graphs while it fitted is left as the export wrote it.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

import click

from discodiff.atomic import atomic_write_text
from discodiff.cli_util import CONTEXT, IntRange, main_for, run
from discodiff.errors import UserError
from discodiff.lock import BUNDLE_WAIT_S, DirLock
from discodiff.runtime.fit.model import DEFAULT_FIT_SOLVER, fit_bundle, with_fits
from discodiff.runtime.manifest import MANIFEST, Manifest
from discodiff.runtime.solvers import SOLVERS, steps_for

DEFAULT_BUNDLE = Path("runs") / "shapes" / "bundle"
CORES = os.cpu_count() or 1          # --threads bound, as discodiff-run's
PROBE_PREFIX = ".discodiff-fit-probe."   # + pid: what a fit killed at its start leaves is reclaimed by PID


class CallCounts(click.ParamType):
    """A comma-separated list of denoiser call counts, e.g. 5,6,8,10."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
        """"5,8,6" -> (5, 6, 8): sorted, without repeats, each 2..1000; a click usage error otherwise."""
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if not re.fullmatch(r"[0-9]+(,[0-9]+)*", text):
            self.fail(f"{value!r} is not a list of call counts like 5,6,8,10", param, ctx)
        counts = tuple(sorted({int(v) for v in text.split(",")}))
        if counts[0] < 2 or counts[-1] > 1000:
            self.fail(f"{value!r}: call counts must be 2..1000", param, ctx)
        return counts


def check_counts(counts: tuple[int, ...], solver: str) -> None:
    """One UserError line for a call count the solver cannot make (e.g. an even one for Heun)."""
    for n in counts:
        try:
            steps_for(solver, n)
        except ValueError as e:
            raise UserError(f"--nfe {n} with --solver {solver}: {e}; pick odd counts for heun") from None


def update_manifest(man: Manifest, change: Callable[[Manifest], Manifest], program: str, what: str,
                    log=None) -> Manifest:
    """Under the bundle's lock: re-read the manifest of `man.bundle`, refuse if its graphs are no longer
    those `man` describes (what was computed on them, `what`, belongs to graphs the bundle lost), apply
    `change` to it, check the result as the runtime reads it and write it atomically.

    Args:
        man: the manifest the work was done on.
        change: the manifest as it is now -> the manifest to write (e.g. `with_fits(now, fitted)`).
        program, what: name the writer and what it adds, in the messages.
    Returns:
        The manifest written (checked, as `Manifest.from_dict` reads it back).
    """
    busy = f"wait for it to finish and run {program} again (the {what} were not written)"
    with DirLock(man.bundle, program, busy).acquire(BUNDLE_WAIT_S, on_wait=log):
        now = Manifest.load(man.bundle, verify=False)
        if now.graphs != man.graphs:
            raise UserError(f"{man.bundle} was re-exported meanwhile (its graphs changed), so the {what}, made on the "
                            f"old graphs, were not written; run {program} again")
        raw = change(now).to_dict()
        written = Manifest.from_dict(man.bundle, raw)   # the runtime's own schema check first
        atomic_write_text(man.bundle / MANIFEST, json.dumps(raw, indent=2) + "\n")
    return written


def fit_into_bundle(man: Manifest, counts, solver: str, threads: int | None, log) -> Manifest:
    """Fit, merge into the manifest as it is then, check it, write it atomically; returns the new manifest."""
    with tempfile.NamedTemporaryFile(dir=man.bundle, prefix=f"{PROBE_PREFIX}{os.getpid()}."):
        pass                                             # an unwritable bundle fails now, not after the fit
    fitted = fit_bundle(man, counts, solver, threads=threads, log=log)
    return update_manifest(man, lambda now: with_fits(now, fitted), "discodiff-fit", "fits", log)


@click.command(context_settings=CONTEXT)
@click.option("--bundle", type=click.Path(path_type=Path), default=DEFAULT_BUNDLE, show_default=True,
              help="Bundle directory written by discodiff-export.")
@click.option("--nfe", "counts", type=CallCounts(), required=True, help="Denoiser call counts to fit, e.g. 5,6,8,10.")
@click.option("--solver", type=click.Choice(SOLVERS), default=DEFAULT_FIT_SOLVER, show_default=True,
              help="Solver the levels are fitted for.")
@click.option("--threads", type=IntRange(1, CORES), default=None, help=f"ONNX Runtime intra-op threads (1..{CORES}).")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
def command(bundle, counts, solver, threads, quiet):
    """Fit the noise levels of a solver to a bundle's model for given numbers of denoiser calls, against a
    Heun teacher, and store them (with their held-out error) in the bundle's manifest."""
    check_counts(counts, solver)
    man = Manifest.load(bundle)
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    man = fit_into_bundle(man, counts, solver, threads, log)
    for n in counts:
        f = man.sampling.fitted[str(n)].info
        click.echo(f"{n} calls ({solver}): held-out RMSE {f['heldout_rmse']:.4f} against the teacher "
                   f"(EDM rho=7: {f['heldout_rmse_edm']:.4f})")
    click.echo(f"wrote {bundle / 'manifest.json'}; sample with: discodiff-run --bundle {bundle} --nfe {counts[0]}")


main = main_for(command, "discodiff-fit")

if __name__ == "__main__":
    sys.exit(run(command, prog="discodiff-fit"))
