"""`discodiff-fit`: fit sampling schedules to a bundle's model, in place, without re-exporting.

    discodiff-fit --nfe 5,6,8,10                       # runs/shapes/bundle, the default solver
    discodiff-fit --bundle runs/toy8/bundle --nfe 8 --solver ipndm

Torch-free: the fit runs the bundle's own graphs on ONNX Runtime. The fitted schedules go into the
manifest (sampling.fitted, keyed by the number of denoiser calls, with their held-out error), which is
checked and replaced atomically; the graph files and their hashes are untouched. `discodiff-run --nfe N`
then samples with N calls on the fitted levels.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import click

from discodiff.atomic import atomic_write_text
from discodiff.cli_util import CONTEXT, IntRange, main_for, run
from discodiff.errors import UserError
from discodiff.runtime.fit_model import DEFAULT_FIT_SOLVER, fit_bundle, with_fits
from discodiff.runtime.solvers import SOLVERS, steps_for

DEFAULT_BUNDLE = Path("runs") / "shapes" / "bundle"


class CallCounts(click.ParamType):
    """A comma-separated list of denoiser call counts, e.g. 5,6,8,10."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):
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
    for n in counts:
        try:
            steps_for(solver, n)
        except ValueError as e:
            raise UserError(f"--nfe {n} with --solver {solver}: {e}; pick odd counts for heun") from None


def fit_into_bundle(man, counts, solver: str, threads: int | None, log) -> dict:
    """Fit, merge into the manifest, check it, write it atomically; returns the new raw manifest."""
    from discodiff.runtime.manifest import MANIFEST, Manifest

    with tempfile.NamedTemporaryFile(dir=man.bundle, prefix=".discodiff-fit-probe-"):
        pass                                             # an unwritable bundle fails now, not after the fit
    raw = with_fits(man.raw, fit_bundle(man, counts, solver, threads=threads, log=log))
    Manifest.from_dict(man.bundle, raw)                  # the runtime's own schema check first
    atomic_write_text(man.bundle / MANIFEST, json.dumps(raw, indent=2) + "\n")
    return raw


@click.command(context_settings=CONTEXT)
@click.option("--bundle", type=click.Path(path_type=Path), default=DEFAULT_BUNDLE, show_default=True,
              help="Bundle directory written by discodiff-export.")
@click.option("--nfe", "counts", type=CallCounts(), required=True, help="Denoiser call counts to fit, e.g. 5,6,8,10.")
@click.option("--solver", type=click.Choice(SOLVERS), default=DEFAULT_FIT_SOLVER, show_default=True,
              help="Solver the levels are fitted for.")
@click.option("--threads", type=IntRange(1, 1024), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
def command(bundle, counts, solver, threads, quiet):
    """Fit the noise levels of a solver to a bundle's model for given numbers of denoiser calls, against a
    Heun teacher, and store them (with their held-out error) in the bundle's manifest."""
    from discodiff.runtime.manifest import Manifest

    check_counts(counts, solver)
    man = Manifest.load(bundle)
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    raw = fit_into_bundle(man, counts, solver, threads, log)
    for n in counts:
        f = raw["sampling"]["fitted"][str(n)]
        click.echo(f"{n} calls ({solver}): held-out RMSE {f['heldout_rmse']:.4f} against the teacher "
                   f"(EDM rho=7: {f['heldout_rmse_edm']:.4f})")
    click.echo(f"wrote {bundle / 'manifest.json'}; sample with: discodiff-run --bundle {bundle} --nfe {counts[0]}")


main = main_for(command, "discodiff-fit")

if __name__ == "__main__":
    sys.exit(run(command, prog="discodiff-fit"))
