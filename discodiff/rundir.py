"""A training run directory: the files `discodiff-train` writes there, and how it knows its own runs.

Torch-free. `training_options.json` carries the marker {"format": "discodiff-run", "schema": 1}; a
directory without it is never cleared or replaced, whatever flags are given. Runs written before the
marker existed are recognised by the four keys every one of their options files has.
"""
from __future__ import annotations

import json
from pathlib import Path

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

# What a directory holds, as `classify` reports it.
ABSENT, EMPTY, RUN, STALE, FOREIGN = "absent", "empty", "run", "stale", "foreign"


def marker() -> dict:
    return {"format": RUN_FORMAT, "schema": RUN_SCHEMA}


def read_options(out: Path) -> dict | None:
    """The run's options if `out` holds a run options file this toolkit wrote, else None."""
    try:
        opts = json.loads((Path(out) / OPTIONS_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
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
    if not any(out.iterdir()):
        return EMPTY
    if read_options(out) is None:
        return FOREIGN
    return RUN if (out / STATE_FILE).is_file() or (out / MODEL_FILE).is_file() else STALE


def own_files(out: Path) -> list[Path]:
    """Every file a run writes that exists in `out` (including temp files a killed save left behind)."""
    out = Path(out)
    found = [out / f for f in RUN_FILES if (out / f).is_file()]
    found += sorted((out / PROGRESS_DIR).glob(PROGRESS_GLOB)) if (out / PROGRESS_DIR).is_dir() else []
    for name in RUN_FILES:  # atomic_write's temp names: .<stem>.<random><suffix>.tmp
        stem, suffix = name.rsplit(".", 1)
        found += sorted(out.glob(f".{stem}.*.{suffix}.tmp"))
    return found


def clear_run(out: Path) -> None:
    """Remove what a run wrote in `out`, and nothing else. Only for RUN or STALE directories."""
    out = Path(out)
    if classify(out) not in (RUN, STALE):
        raise ValueError(f"{out} is not a discodiff run; refusing to remove anything from it")
    options = out / OPTIONS_FILE
    for f in own_files(out):
        if f != options:
            f.unlink(missing_ok=True)
    progress = out / PROGRESS_DIR
    if progress.is_dir() and not any(progress.iterdir()):
        progress.rmdir()
    options.unlink(missing_ok=True)  # the marker goes last: an interrupted clear stays recognisable
