"""A training run directory: the files `discodiff-train` writes there, and how it knows its own runs.

Torch-free. `training_options.json` carries the marker {"format": "discodiff-run", "schema": 1}; a
directory without it is never cleared or replaced, whatever flags are given. Runs written before the
marker existed are recognised by the four keys every one of their options files has.

One writer at a time: `discodiff-train` holds the directory's lock (`discodiff.lock`, file LOCK_FILE)
for the whole run. The lock file is the run's own: it never makes a directory FOREIGN (a folder holding
only the file a killed first run left is EMPTY), and `clear_run` leaves it, since the run clearing the
directory holds it (the holder removes it on release).

Nothing is removed or written through a symbolic link: a run's entry that is a link (samples/ pointing
at a user's folder, a linked model.safetensors) is refused in one line (`check_links`) rather than
skipped or unlinked, because the run would go on to write through it (samples/step-*.png) and the link
is the user's to resolve.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from discodiff.errors import UserError
from discodiff.jsonfile import parse_json
from discodiff.lock import LOCK_FILE

RUN_FORMAT = "discodiff-run"
RUN_SCHEMA = 1

OPTIONS_FILE = "training_options.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"
RUN_FILES = (MODEL_FILE, STATE_FILE, METRICS_FILE, OPTIONS_FILE, "loss.png", "samples.png")
PROGRESS_DIR = "samples"            # samples/step-XXXXXX.png
PROGRESS_GLOB = "step-*.png"
LEGACY_KEYS = ("name", "data", "model", "train")
MAX_OPTIONS_BYTES = 16 << 20        # real options files are a few KB

# What a directory holds, as `classify` reports it.
ABSENT, EMPTY, RUN, STALE, FOREIGN = "absent", "empty", "run", "stale", "foreign"


def marker() -> dict:
    return {"format": RUN_FORMAT, "schema": RUN_SCHEMA}


def read_options(out: Path) -> dict | None:
    """The run's options if `out` holds a run options file this toolkit wrote, else None (also for a
    link, a FIFO, a huge or an unparsable file: none of them is a run's)."""
    path = Path(out) / OPTIONS_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            text = f.read(MAX_OPTIONS_BYTES + 1)
        opts = None if len(text) > MAX_OPTIONS_BYTES else parse_json(text, str(path), "")
    except (OSError, UserError):
        return None
    if not isinstance(opts, dict):
        return None
    if opts.get("format") == RUN_FORMAT or ("format" not in opts and all(k in opts for k in LEGACY_KEYS)):
        return opts
    return None


def classify(out: Path) -> str:
    """ABSENT, EMPTY, RUN (ours, with saved state or a model), STALE (ours, nothing saved: a run that
    failed before its first save) or FOREIGN (anything else: never touched)."""
    out = Path(out)
    if not out.exists():
        return ABSENT
    if not out.is_dir():
        return FOREIGN
    if not any(p.name != LOCK_FILE for p in out.iterdir()):
        return EMPTY
    if read_options(out) is None:
        return FOREIGN
    return RUN if (out / STATE_FILE).is_file() or (out / MODEL_FILE).is_file() else STALE


def _named(out: Path) -> list[Path]:
    """Every entry of `out` a run writes (links included), never looking inside a linked samples/."""
    progress = out / PROGRESS_DIR
    found = [out / f for f in RUN_FILES if os.path.lexists(out / f)]
    found += [progress] if progress.is_symlink() else sorted(progress.glob(PROGRESS_GLOB)) if progress.is_dir() else []
    for name in RUN_FILES:  # atomic_write's temp names: .<stem>.<pid>.<random><suffix>.tmp
        stem, suffix = name.rsplit(".", 1)
        found += sorted(out.glob(f".{stem}.*.{suffix}.tmp"))
    return found


def check_links(out: Path) -> None:
    """Refuse, in one line naming it, a run entry of `out` that is a symbolic link."""
    for p in _named(Path(out)):
        if p.is_symlink():
            raise UserError(f"{p} is a symbolic link (to {os.readlink(p)}); a run writes and removes its files only "
                            "in --out itself, never through a link: replace the link by a folder or file of its "
                            "own, or choose another --out (nothing was changed)")


def own_files(out: Path) -> list[Path]:
    """Every file a run writes that exists in `out` (including temp files a killed save left behind);
    never a link, nor anything reached through one."""
    return [p for p in _named(Path(out)) if p.is_file() and not p.is_symlink()]


def clear_run(out: Path) -> None:
    """Remove what a run wrote in `out`, and nothing else. Only for RUN or STALE directories."""
    out = Path(out)
    if classify(out) not in (RUN, STALE):
        raise ValueError(f"{out} is not a discodiff run; refusing to remove anything from it")
    check_links(out)
    options = out / OPTIONS_FILE
    for f in own_files(out):
        if f != options:
            f.unlink(missing_ok=True)
    progress = out / PROGRESS_DIR
    if progress.is_dir() and not progress.is_symlink() and not any(progress.iterdir()):
        progress.rmdir()
    options.unlink(missing_ok=True)  # the marker goes last: an interrupted clear stays recognisable
