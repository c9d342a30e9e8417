"""Writing a bundle: every graph exported, linted and checked for parity, then `manifest.json` last.

The bundle is built in a temporary directory beside its destination and renamed into place only when
everything passed, so a failed export leaves nothing behind and an existing bundle is replaced whole.
Only a bundle this toolkit wrote is ever replaced (`check_destination`). TensorRT engines (`--trt`) are
added to a finished bundle: engine files first, the updated manifest last (atomically), so the bundle
is valid at every moment.

The manifest is built from the runtime's own types (`discodiff.runtime.manifest.Manifest` and its
parts) and written as `Manifest.to_dict()`, so no key is spelled here that the runtime reads; what only
people read (provenance, parity figures, lint, export costs) goes into `Manifest.info` (`export_info`).

Concurrent writers (a second export, discodiff-fit adding schedules) take the bundle's lock
(`discodiff.lock`) around what they change in it: the export for its last check and the rename, the
engine step and discodiff-fit for their read-modify-write of manifest.json (`fit.cli.update_manifest`:
re-read under the lock, so a fit written meanwhile is kept). Each holds it for milliseconds; a holder
that keeps it longer than BUNDLE_WAIT_S is named and the export refused.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from discodiff import __version__
from discodiff.atomic import atomic_write_text, reclaim, sha256_file, temp_dir
from discodiff.checkpoint import load_model
from discodiff.config import to_dict
from discodiff.errors import UserError
from discodiff.jsonfile import parse_json
from discodiff.lock import BUNDLE_WAIT_S, LOCK_FILE, DirLock
from discodiff.export import parity
from discodiff.export.graphs import graph_specs
from discodiff.export.lint import TRT_PARSER_VERSION, lint
from discodiff.export.onnx_export import EXTERNAL_DATA_ABOVE_MIB, OPSET, data_file, export_graph, fp16_summary, \
    mixed_fp16, wants_external_data
from discodiff.runtime.backends.ort import OrtBackend
from discodiff.runtime.fit.cli import PROBE_PREFIX, update_manifest
from discodiff.runtime.fit.model import DEFAULT_FIT_SOLVER, fit_bundle, with_fits
from discodiff.runtime.manifest import MANIFEST, MAX_MANIFEST_BYTES, Engine, Manifest, Sampling, TimingCache, \
    bundle_files, open_inside
from discodiff.sampling import model_meta


def _temp_prefixes(out: Path) -> tuple[str, str]:
    return f".{out.name}.tmp-", f".{out.name}.old-"


NOT_OURS = "choose another --out (nothing was written)"


def _read_manifest(out: Path) -> dict | None:
    """The manifest of the folder `out` as JSON, or None if it has no readable regular manifest file."""
    try:
        with open_inside(out, MANIFEST, "the manifest") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except (UserError, OSError):
        return None
    if len(text) > MAX_MANIFEST_BYTES:
        return None
    return parse_json(text, str(out / MANIFEST), f"it is not a bundle discodiff-export can replace; {NOT_OURS}")


def check_destination(out: Path) -> None:
    """A bundle may replace a bundle this toolkit wrote, and nothing else: `out` must be absent, empty,
    or hold a manifest with this toolkit's format and only the files that manifest names (and its lock
    file). Temp files that a killed manifest rewrite or fit left there (`.manifest.<dead pid>...`) are
    removed first, once the manifest shows the folder is a bundle; those of a running process still
    refuse."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a bundle directory; {NOT_OURS}")
    if not any(p.name != LOCK_FILE for p in out.iterdir()):
        return
    named = bundle_files(_read_manifest(out))
    if named is None:
        raise UserError(f"{out} exists and is not a bundle written by discodiff-export; {NOT_OURS}")
    for prefix in (f".{Path(MANIFEST).stem}.", PROBE_PREFIX):   # a killed manifest rewrite's, a killed fit's
        reclaim(out, prefix)
    named.add(LOCK_FILE)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in named)
    if foreign:
        raise UserError(f"{out} is a bundle but also holds {foreign[0]!r}, which the bundle did not write; move it "
                        f"out or {NOT_OURS}")


def export_bundle(checkpoint: Path, out: Path, *, max_batch: int = 64, opt_batch: int = 32, solver: str = "heun",
                  steps: int = 18, fit_nfe: tuple[int, ...] = (), fit_solver: str = DEFAULT_FIT_SOLVER,
                  external_data_above_mib: int = EXTERNAL_DATA_ABOVE_MIB, log=print) -> Manifest:
    """Export, lint and check every graph (and fit schedules for `fit_nfe` calls on the new graphs);
    write the bundle at `out`. Returns its manifest. A graph whose weights exceed `external_data_above_mib`
    MiB (0: every graph) keeps them in `<name>.onnx.data` beside it, listed with its sha256 in the
    manifest entry (`external_data`)."""
    start = time.perf_counter()
    check_destination(out)
    model, info = load_model(checkpoint)
    cfg, meta = model.cfg, model_meta(model.cfg)
    specs = graph_specs(model, max_batch, opt_batch)
    for prefix in _temp_prefixes(out):   # what an export killed mid-way left beside the bundle
        reclaim(out.parent, prefix)
    tmp = temp_dir(out.parent, _temp_prefixes(out)[0])
    try:
        rng = np.random.default_rng(0)
        graphs, paths, problems, seconds = {}, {}, [], {}
        log(f"exporting {len(specs)} graphs to ONNX ...")
        for name, (spec, wrapper) in specs.items():
            t0 = time.perf_counter()
            path = tmp / f"{name}.onnx"
            feeds = spec.sample_feeds(rng, 2, cfg.sigma_data)
            if name == "denoiser_fp16":   # the fp32 wrapper, its trunk in fp16 for the export only
                with mixed_fp16(specs["denoiser"][1]) as fp16:
                    proto = export_graph(fp16, spec, path, feeds, wants_external_data(fp16, external_data_above_mib))
            else:
                proto = export_graph(wrapper, spec, path, feeds, wants_external_data(wrapper, external_data_above_mib))
            rep = lint(proto, name)
            problems += [f"{name}: {p}" for p in rep.problems]
            spec.file, spec.sha256 = path.name, sha256_file(path)
            spec.info = {"opset": OPSET, "nodes": len(proto.graph.node), "trt_lint": rep.as_dict()}
            data = data_file(path)
            if data.exists():
                spec.external_data = {data.name: sha256_file(data)}
            if spec.precision == "mixed-fp16":
                spec.info["fp16"] = fp16_summary(proto)
            graphs[name], paths[name] = spec, path
            seconds[name] = round(time.perf_counter() - t0, 3)
            log(f"exporting {name} ... ({seconds[name]:.1f} s{f', weights in {data.name}' if data.exists() else ''})")
        if problems:
            raise UserError(f"TensorRT lint failed ({len(problems)} problem(s)), first: {problems[0]}")
        log("checking parity against PyTorch ...")
        with OrtBackend(graphs, paths) as backend:
            figures = parity.run_all(model, backend)
        man = Manifest(tmp, meta, graphs, Sampling(solver, steps), info.get("data", {}).get("class_names", []),
                       info=export_info(checkpoint, cfg, info, figures))
        if fit_nfe:   # on the new graphs, in the temp bundle: the bundle appears with its fits or not at all
            man = with_fits(man, fit_bundle(man, fit_nfe, fit_solver, log=log))
        man.info["export"] = {"seconds": round(time.perf_counter() - start, 3), "per_graph_s": seconds,
                              "peak_rss_mb": peak_rss_mib(), "external_data_above_mib": external_data_above_mib}
        raw = man.to_dict()
        manifest = Manifest.from_dict(out, raw)   # the runtime's own schema check, before anything is kept
        atomic_write_text(tmp / MANIFEST, json.dumps(raw, indent=2) + "\n")
        _replace_locked(tmp, out)
        return manifest
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno and str(tmp) in str(e.filename or ""):   # name the bundle being written, not its temp folder
            raise OSError(e.errno, e.strerror, str(out)) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_info(checkpoint: Path, cfg, info: dict, figures: dict) -> dict:
    """The manifest's `info`, what only people read: provenance (toolkit and library versions, host,
    the source checkpoint's path, sha256, data and training options, the model config) and what the
    export measured (parity figures, the TensorRT lint). The export costs are added last."""
    return {
        "toolkit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "exported_on": {"host": platform.node(), "machine": platform.machine(), "torch": torch.__version__,
                        "onnx": onnx.__version__},
        "source": {"checkpoint": os.path.abspath(checkpoint), "sha256": sha256_file(checkpoint),
                   "data": info.get("data", {}), "train": info.get("train", {})},
        "model": to_dict(cfg),
        "parity": figures,
        "trt_lint": {"parser": TRT_PARSER_VERSION, "ok": True},
    }


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def _replace_locked(new: Path, out: Path) -> None:
    """`_replace_dir` under the old bundle's lock, checked again there: a fit may have rewritten its
    manifest, or another export replaced it, since the first check. A fit waiting for this lock finds
    the new bundle once it is released (the lock file went with the old directory)."""
    if not out.is_dir():
        _replace_dir(new, out)
        return
    busy = "wait for it to finish and export again (the new bundle was not written)"
    with DirLock(out, "discodiff-export", busy).acquire(BUNDLE_WAIT_S):
        check_destination(out)
        _replace_dir(new, out)


def _replace_dir(new: Path, out: Path) -> None:
    """Put directory `new` at `out`; an old bundle there is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = temp_dir(out.parent, _temp_prefixes(out)[1])
        os.replace(out, old / "bundle")
    os.replace(new, out)
    os.chmod(out, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def add_engines(man: Manifest, log=print) -> Manifest:
    """Build, check and add TensorRT engines to the finished bundle `man`; returns the manifest written."""
    from discodiff.export import trt

    stamp = trt.require()
    out = man.bundle
    cache = out / "timing.cache"
    engines, written = {}, []
    rng = np.random.default_rng(0)
    try:
        for name, spec in man.graphs.items():
            log(f"building TensorRT engine for {name} ...")
            eng = out / f"{name}.engine"
            written.append(eng)
            trt.build_engine(out / spec.file, spec, eng, cache)
            check = trt.check_engine(eng, spec, out / spec.file, rng, man.meta.sigma_data)
            engines[name] = Engine(eng.name, sha256_file(eng), {"source_graph": name, "precision": spec.precision,
                                                                 "check_vs_onnxruntime": check})
        timing = TimingCache(cache.name, sha256_file(cache)) if cache.exists() else None
        # the manifest as it is now (a fit may have added schedules while the engines were built)
        new = update_manifest(man, lambda now: replace(now, engines=engines, tensorrt=stamp, timing_cache=timing),
                              "discodiff-export --trt", "engines")
    except BaseException:
        keep = _named_now(out)   # a bundle exported there meanwhile may name engines of the same names
        for f in written:
            if f.name not in keep:
                f.unlink(missing_ok=True)
        raise
    return new


def _named_now(bundle: Path) -> set[str]:
    """The files the bundle's manifest names now (none if it cannot be read)."""
    try:
        return Manifest.load(bundle, verify=False).files()
    except UserError:
        return set()
