"""`discodiff-train`: build the options, record them, train both stages.

    discodiff-train                                  # the default preset (shapes), into runs/shapes
    discodiff-train --preset toy8 --latents 0        # the plain EDM baseline of the same size
    discodiff-train --data my_vectors.npy --steps 5000 --out runs/mine
    torchrun --nproc_per_node 2 -m discodiff.train.cli --preset toy8   # DDP

The CLI only builds keyword arguments for `loop.train`, writes them to training_options.json and
supports --dry-run (print them and stop).

One writer per run directory: --out is first checked without writing anything (a foreign folder is
refused untouched), then locked for the whole run (`discodiff.lock`; under torchrun rank 0 holds it)
and checked again under the lock, since another run may have written it in between. A second run into
a locked --out is refused in one line naming the holder, before it writes or removes anything.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from discodiff import presets, rundir
from discodiff.cli_util import CONTEXT, FloatRange, IntRange, main_for, run
from discodiff.config import DataSpec, ModelConfig, TrainConfig, check_model, check_train, from_dict, replace, to_dict
from discodiff.errors import UserError
from discodiff.lock import DirLock, live_holder
from discodiff.runtime.cpu import cores

# --resume refuses a model change; each field by the option that sets it
MODEL_OPTIONS = {"m": "--latents", "k": "--codebook", "gumbel_tau": "--gumbel-tau",
                 "straight_through": "--straight-through/--soft", "latent_dropout": "--latent-dropout"}


BUSY = "one run writes a run directory at a time: wait for it to end, or choose another --out (nothing was changed)"


def _check_out(out: Path, resume: bool, overwrite: bool) -> str:
    """Refuse --out unless it is absent, empty, or a run this toolkit wrote; returns its kind."""
    kind = rundir.classify(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the run")
    if kind == rundir.FOREIGN:
        raise UserError(f"--out {out} is not empty and holds no discodiff run (no {rundir.OPTIONS_FILE} written by "
                        "discodiff-train); nothing was changed, choose another --out")
    if resume:
        if kind != rundir.RUN or not (out / rundir.STATE_FILE).is_file():
            raise UserError(f"--resume: {out} holds no saved training state; start a new run without --resume")
    elif kind == rundir.RUN and not overwrite:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it, --overwrite to "
                        "replace it, or --out for a new directory")
    if kind in (rundir.RUN, rundir.STALE):
        rundir.check_links(out)
    return kind


def _take_out(out: Path, resume: bool, overwrite: bool, saved: dict | None) -> tuple[DirLock, str]:
    """Lock --out for this run and check it again under the lock; returns the lock and the kind."""
    out.mkdir(parents=True, exist_ok=True)
    lock = DirLock(out, "discodiff-train", BUSY).acquire()
    try:
        kind = _check_out(out, resume, overwrite)
        if resume and rundir.read_options(out) != saved:
            raise UserError(f"{out} was changed by another run while this one started; nothing was changed, "
                            "run the command again")
    except BaseException:
        lock.release()
        raise
    return lock, kind


def _take_out_ranks(d, out: Path, resume: bool, overwrite: bool, saved: dict | None) -> tuple[DirLock | None, str]:
    """Rank 0 takes --out (`_take_out`); every rank learns whether it did, so a refused run ends on all
    ranks at once instead of leaving the others waiting in a collective."""
    taken, error = (None, None), None
    if d.main:
        try:
            taken = _take_out(out, resume, overwrite, saved)
        except Exception as e:   # noqa: BLE001 -- re-raised below, after the other ranks are told
            error = e
    if not d.all_true(error is None):
        raise error or UserError(f"rank 0 could not start the run in --out {out} (see its message)")
    return taken


def _saved_options(out: Path) -> tuple[dict, dict]:
    """The options of the run in `out` (for --resume), checked field by field."""
    saved = rundir.read_options(out)
    try:
        if saved is None:
            raise ValueError(f"{rundir.OPTIONS_FILE} is missing, truncated or not JSON")
        opts = {"name": saved["name"], "data": from_dict(DataSpec, saved["data"]),
                "model": check_model(from_dict(ModelConfig, saved["model"])),
                "train": check_train(from_dict(TrainConfig, saved["train"]))}
    except (KeyError, ValueError, TypeError) as e:
        what = f"has no {e} entry" if isinstance(e, KeyError) else str(e)
        raise UserError(f"--resume: {out / rundir.OPTIONS_FILE} is damaged ({what}); the run cannot be continued, "
                        "start it again with --overwrite")
    return saved, opts


def _build(preset: str | None, data: str | None, resolution: int) -> tuple[dict, object]:
    from discodiff.data import load, spec_for_path

    if data:
        spec = spec_for_path(data, resolution)
        ds = load(spec)
        model, train = presets.model_for(ds)
        name = Path(data).stem
    else:
        spec, model, train = presets.get(preset)
        if resolution:
            raise UserError("--resolution applies to --data images; presets have a fixed size")
        ds = load(spec)
        name = preset
    return {"name": name, "data": spec, "model": model, "train": train}, ds


@click.command(context_settings=CONTEXT)
# data and model
@click.option("--preset", type=click.Choice(presets.names()), default=None,
              help=f"Built-in data + model (default: {presets.DEFAULT_PRESET}).")
@click.option("--data", type=str, default=None, help="Training data: a .npy of float vectors [N, D], a folder of "
              "images (one subfolder per class, optional), or an EDM-style .zip.")
@click.option("--resolution", type=IntRange(4, 4096), default=None, help="Resize --data images to this square size.")
@click.option("--latents", "m", type=IntRange(0, 64), default=None,
              help="Number of discrete latents m; 0 trains the plain EDM baseline of the same size.")
@click.option("--codebook", "k", type=IntRange(2, 65536), default=None, help="Codebook size k per latent.")
@click.option("--gumbel-tau", type=FloatRange(min=0, min_open=True), default=None, help="Gumbel-softmax temperature.")
@click.option("--straight-through/--soft", default=None, help="Hard one-hot latents with straight-through gradient.")
@click.option("--latent-dropout", type=FloatRange(0, 1, max_open=True), default=None,
              help="Probability of the null latent (enables classifier-free guidance).")
# optimisation
@click.option("--steps", type=IntRange(min=1), default=None, help="Stage 1 steps (denoiser + encoder).")
@click.option("--prior-steps", type=IntRange(min=1), default=None, help="Stage 2 steps (prior).")
@click.option("--batch", type=IntRange(min=1), default=None, help="Global batch size (split over DDP ranks).")
@click.option("--lr", type=FloatRange(min=0, min_open=True, max=10), default=None, help="Stage 1 learning rate.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default=None,
              help="After warm-up: constant, or cosine decay to 0 at the last step (both stages).")
@click.option("--seed", type=IntRange(0, 2**62), default=None, help="Training seed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=IntRange(1, cores()), default=None,
              help="CPU threads (default: the free cores at start, kept for the run; --resume reuses the saved count).")
@click.option("--share-cores", is_flag=True, help="Re-decide the CPU threads between steps from the machine's load "
              "(faster next to a sampler; the weights then depend on the load, so resume is no longer bit-exact).")
# run directory and outputs
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default: runs/<preset>).")
@click.option("--sample-every", type=IntRange(min=0), default=None, help="Write a sample grid every N steps.")
@click.option("--save-every", type=IntRange(min=1), default=None,
              help="Save the training state every N steps (default 500; signals always save).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its saved state (--steps may grow).")
@click.option("--overwrite", is_flag=True, help="Replace a finished or stopped run in --out (only its own files).")
@click.option("--init-only", is_flag=True, help="Write the untrained model (initial weights) as model.safetensors "
              "and stop: for exporting and benchmarking sizes this machine cannot train.")
@click.option("--dry-run", is_flag=True, help="Print the resolved options as JSON and stop.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(preset, data, resolution, m, k, gumbel_tau, straight_through, latent_dropout, steps, prior_steps, batch,
            lr, lr_schedule, seed, device, threads, share_cores, out, sample_every, save_every, resume, overwrite,
            init_only, dry_run, quiet):
    """Train a DisCo-Diff model: stage 1 denoiser + encoder, stage 2 autoregressive prior.

    Writes to --out: model.safetensors (EMA weights + config), train_state.safetensors (for --resume),
    metrics.jsonl, training_options.json, loss.png, samples.png and samples/step-*.png. SIGINT, SIGTERM
    and SIGHUP stop it after the current step with the state saved; --resume continues exactly.
    """
    if preset and data:
        raise UserError("give either --preset or --data, not both")
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it; choose one")
    if resume and init_only:
        raise UserError("--init-only writes an untrained model; it cannot --resume a run")
    explicit = preset or (Path(data).stem if data else None)
    preset = preset or (None if data else presets.DEFAULT_PRESET)
    out = out or Path("runs") / (preset or Path(data).stem)

    if out.is_dir() and (who := live_holder(out)):   # what the lock would say, before anything is written
        raise UserError(f"{out} is being written by {who}; {BUSY}")
    _check_out(out, resume, overwrite)   # before anything is written; again under the lock (_take_out)
    saved = None
    if resume:
        saved, opts = _saved_options(out)
        preset = saved.get("preset")
        if explicit and explicit != saved["name"]:
            raise UserError(f"--resume continues {out}, which trains {saved['name']!r}; drop --preset/--data")
        from discodiff.data import load

        ds = load(opts["data"])
    else:
        opts, ds = _build(preset, data, resolution or 0)

    model, train = opts["model"], opts["train"]
    changes = {k_: v for k_, v in dict(m=m, k=k, gumbel_tau=gumbel_tau, straight_through=straight_through,
                                        latent_dropout=latent_dropout).items() if v is not None}
    if resume and changes:
        raise UserError(f"--resume keeps the saved model; drop {', '.join(MODEL_OPTIONS[c] for c in changes)}")
    model = replace(model, **changes)
    if model.m == 0:
        model = replace(model, latent_dropout=0.0)
    tchanges = {k_: v for k_, v in dict(steps=steps, prior_steps=prior_steps, batch=batch, lr=lr, lr_schedule=lr_schedule,
                                         sample_every=sample_every, save_every=save_every, seed=seed).items()
                if v is not None}
    train = replace(train, **tchanges)
    options = {**rundir.marker(), "name": opts["name"], "preset": preset if not data else None,
               "data": to_dict(opts["data"]), "model": to_dict(model), "train": to_dict(train), "command": sys.argv}
    if dry_run:
        click.echo(json.dumps(options, indent=2))
        return
    if init_only:
        from discodiff.train.loop import write_initial

        lock, kind = _take_out(out, resume, overwrite, saved)
        with lock:
            if kind in (rundir.RUN, rundir.STALE):
                rundir.clear_run(out)
            path = write_initial(out, ds, model, train, options)
        if not quiet:
            click.echo(f"wrote the untrained {opts['name']} model to {path}", err=True)
        return

    from discodiff.train import dist as dist_mod
    from discodiff.train.loop import train as train_fn

    d = dist_mod.init(device)
    lock = None
    try:
        lock, kind = _take_out_ranks(d, out, resume, overwrite, saved)
        if d.main and kind in (rundir.RUN, rundir.STALE) and not resume:
            rundir.clear_run(out)  # only the files a run writes; anything else in --out stays
        if d.main and not quiet:
            click.echo(f"training {opts['name']}: {len(ds)} examples of shape {list(ds.data_shape)}, "
                       f"m={model.m} latents x k={model.k} codes, {train.steps} + {train.prior_steps} steps "
                       f"on {d.device} x{d.world} -> {out}", err=True)
        path = train_fn(out, ds, model, train, d, options, resume=resume, progress=not quiet,
                        resume_hint=f"discodiff-train --out {out} --resume", threads=threads, share_cores=share_cores)
        if d.main and not quiet:
            click.echo(f"wrote {path}, {out / 'samples.png'} and {out / 'loss.png'}", err=True)
    finally:
        if lock is not None:
            lock.release()
        dist_mod.shutdown(d)


main = main_for(command, "discodiff-train")

if __name__ == "__main__":
    sys.exit(run(command, prog="discodiff-train"))
