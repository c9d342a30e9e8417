"""`discodiff-export`: checkpoint -> bundle (ONNX graphs, parity figures, manifest) [+ TensorRT engines].

    discodiff-export                                     # runs/shapes/model.safetensors -> runs/shapes/bundle
    discodiff-export --checkpoint runs/toy8/model.safetensors --max-batch 128
    discodiff-export --trt                               # also TensorRT engines (needs TensorRT + GPU)
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from discodiff.cli_util import CONTEXT, IntRange, main_for, run
from discodiff.errors import UserError
from discodiff.presets import DEFAULT_PRESET
from discodiff.runtime.fit.cli import CallCounts, check_counts
from discodiff.runtime.fit.model import DEFAULT_FIT_SOLVER
from discodiff.runtime.solvers import SOLVERS

DEFAULT_CHECKPOINT = Path("runs") / DEFAULT_PRESET / "model.safetensors"
EXTERNAL_DATA_ABOVE_MIB = 1536   # = onnx_export.EXTERNAL_DATA_ABOVE_MIB, not imported here: that module loads torch


@click.command(context_settings=CONTEXT)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINT, show_default=True,
              help="model.safetensors written by discodiff-train.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Bundle directory (default: 'bundle' beside the checkpoint). An existing bundle there is replaced.")
@click.option("--max-batch", type=IntRange(1, 4096), default=64, show_default=True,
              help="Largest sampling batch (the denoiser graph takes 2x for guidance).")
@click.option("--opt-batch", type=IntRange(min=1), default=None,
              help="Batch size TensorRT optimises for (default: 32, or --max-batch if smaller).")
@click.option("--solver", type=click.Choice(SOLVERS), default="heun", show_default=True,
              help="Default solver recorded in the manifest.")
@click.option("--steps", type=IntRange(1, 10_000), default=18, show_default=True,
              help="Default number of noise levels recorded in the manifest.")
@click.option("--fit-nfe", type=CallCounts(), default=None,
              help="Also fit schedules for these denoiser call counts (e.g. 5,6,8,10); see discodiff-fit.")
@click.option("--fit-solver", type=click.Choice(SOLVERS), default=DEFAULT_FIT_SOLVER, show_default=True,
              help="Solver the --fit-nfe schedules are fitted for.")
@click.option("--external-data-above", "external_data_above", type=IntRange(0, 1_000_000),
              default=EXTERNAL_DATA_ABOVE_MIB, show_default=True, metavar="MIB",
              help="Store a graph's weights in <graph>.onnx.data beside it when they exceed MIB MiB (0: always). "
                   "A single ONNX file cannot exceed 2 GB.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (needs TensorRT and an NVIDIA GPU).")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
def command(checkpoint, out, max_batch, opt_batch, solver, steps, fit_nfe, fit_solver, external_data_above, trt,
            quiet):
    """Export a trained DisCo-Diff checkpoint to a bundle the torch-free runtime samples from.

    Writes denoiser.onnx (fp32), denoiser_fp16.onnx (mixed precision), encoder.onnx, prior_step.onnx
    (static KV cache), prior_recompute.onnx and manifest.json (hashes, shapes, parity figures, TensorRT
    lint); a graph with large weights keeps them in <graph>.onnx.data beside it. Every export is checked
    against PyTorch; a mismatch exits non-zero and leaves no bundle.
    """
    opt_batch = opt_batch or min(32, max_batch)
    if opt_batch > max_batch:
        raise UserError(f"--opt-batch {opt_batch} is larger than --max-batch {max_batch}; lower it")
    out = out or checkpoint.parent / "bundle"
    if fit_nfe:
        check_counts(fit_nfe, fit_solver)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    from discodiff.export.bundle import add_engines, export_bundle

    man = export_bundle(checkpoint, out, max_batch=max_batch, opt_batch=opt_batch, solver=solver, steps=steps,
                        fit_nfe=fit_nfe or (), fit_solver=fit_solver, external_data_above_mib=external_data_above,
                        log=log)
    click.echo(summary(man.raw, out))
    if trt:
        from discodiff.export.trt import TrtUnavailable

        try:
            man = add_engines(man, log=log)
        except TrtUnavailable as e:
            raise UserError(f"{e} (the ONNX bundle at {out} is complete and usable)") from None
        click.echo(f"TensorRT {man.raw['tensorrt']['tensorrt']} engines on {man.raw['tensorrt']['gpu']}: "
                   + ", ".join(man.engines))


def summary(man: dict, out: Path) -> str:
    p = man["parity"]
    lines = [f"bundle {out}: {len(man['graphs'])} graphs, data {man['data_shape']}, m={man['m']} k={man['k']}",
             f"  parity vs PyTorch: denoiser fp32 {p['denoiser']['max_abs']:.1e} max abs, "
             f"fp16 {p['denoiser_fp16']['max_rel_l2']:.1e} rel L2 (worst sigma)"]
    if "prior" in p:
        lines.append(f"  prior KV cache vs recompute {p['prior']['kv_vs_recompute']:.1e}, "
                     f"vs PyTorch {p['prior']['kv_vs_torch']:.1e}; encoder {p['encoder']['max_abs']:.1e}")
    s = p["sampler"]
    lines.append(f"  whole Heun sampler ({s['seeds']} seeds): fp32 {s['denoiser']['max_abs']:.1e} max abs, "
                 f"fp16 {s['denoiser_fp16']['rel_l2']:.1e} rel L2, tokens agree {s['denoiser']['token_agreement']:.0%}")
    lines.append("  TensorRT lint: ok (" + man["trt_lint"]["parser"] + ")")
    for n, f in sorted(man["sampling"].get("fitted", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"  fitted schedule, {n} calls ({f['solver']}): held-out RMSE {f['heldout_rmse']:.4f} "
                     f"against the teacher (EDM rho=7: {f['heldout_rmse_edm']:.4f})")
    return "\n".join(lines)


main = main_for(command, "discodiff-export")

if __name__ == "__main__":
    sys.exit(run(command, prog="discodiff-export"))
