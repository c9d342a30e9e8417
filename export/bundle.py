"""Writing a bundle: every graph exported, linted and checked for parity, then `manifest.json` last.

The bundle is built in a temporary directory beside its destination and renamed into place only when
everything passed, so a failed export leaves nothing behind and an existing bundle is replaced whole.
TensorRT engines (`--trt`) are added to a finished bundle: engine files first, the updated manifest
last (atomically), so the bundle is valid at every moment.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import __version__
from ..atomic import atomic_write_text, sha256_file
from ..checkpoint import load_model
from ..config import to_dict
from ..errors import UserError
from ..runtime.backends.ort import OrtBackend
from ..runtime.manifest import FORMAT, MANIFEST, SCHEMA
from ..runtime.schedule import RHO, SIGMA_MAX, SIGMA_MIN
from . import parity
from .graphs import GraphSpec, graph_specs
from .lint import TRT_PARSER_VERSION, lint
from .onnx_export import OPSET, export_graph, fp16_summary, mixed_fp16_copy


def spec_entry(spec: GraphSpec) -> dict:
    return {"name": spec.name,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in spec.inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in spec.outputs],
            "batch": spec.batch, "precision": spec.precision, **spec.extra}


def example_inputs(model, spec: GraphSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid inputs at batch 2 for tracing the export."""
    cfg = model.cfg
    if spec.name.startswith("denoiser"):
        return parity.denoiser_inputs(model, np.array([0.5, 5.0]), rng)
    if spec.name == "encoder":
        return {"x": rng.standard_normal((2, *cfg.data_shape)).astype(np.float32)}
    if spec.name == "prior_step":
        shape = spec.inputs[2].concrete(2)
        return {"token": np.array([0, 0], np.int32), "pos": np.array([1], np.int32),
                "k_cache": np.zeros(shape, np.float32), "v_cache": np.zeros(shape, np.float32)}
    return {"tokens": np.zeros((2, cfg.m), np.int32)}


def bundle_files(manifest: dict) -> set[str]:
    """Names of every file a bundle with this manifest consists of (the manifest included)."""
    names = {MANIFEST}
    for kind in ("graphs", "engines"):
        names |= {e["file"] for e in (manifest.get(kind) or {}).values() if isinstance(e, dict) and "file" in e}
    if isinstance(manifest.get("timing_cache"), dict):
        names.add(manifest["timing_cache"].get("file", ""))
    return names


def check_destination(out: Path) -> None:
    """A bundle may replace a bundle this toolkit wrote, and nothing else: `out` must be absent, empty,
    or hold a manifest with this toolkit's format and only the files that manifest names."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a bundle directory; choose another --out (nothing was written)")
    if not any(out.iterdir()):
        return
    try:
        man = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        man = None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise UserError(f"{out} exists and is not a bundle written by discodiff-export; choose another --out "
                        "(nothing was written)")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in bundle_files(man))
    if foreign:
        raise UserError(f"{out} is a bundle but also holds {foreign[0]!r}, which the bundle did not write; move it "
                        "out or choose another --out (nothing was written)")


def export_bundle(checkpoint: Path, out: Path, *, max_batch: int = 64, opt_batch: int = 32, solver: str = "heun",
                  steps: int = 18, log=print) -> dict:
    """Export, lint and check every graph; write the bundle at `out`. Returns the manifest."""
    check_destination(out)
    model, info = load_model(checkpoint)
    cfg = model.cfg
    specs = graph_specs(model, max_batch, opt_batch)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rng = np.random.default_rng(0)
        graphs, lints, paths = {}, {}, {}
        for name, (spec, wrapper) in specs.items():
            log(f"exporting {name} ...")
            if name == "denoiser_fp16":
                wrapper = mixed_fp16_copy(specs["denoiser"][1])
            path = tmp / f"{name}.onnx"
            proto = export_graph(wrapper, spec, path, example_inputs(model, spec, rng))
            rep = lint(proto, name)
            lints[name] = rep
            entry = spec_entry(spec)
            entry.update(file=path.name, sha256=sha256_file(path), opset=OPSET, nodes=len(proto.graph.node),
                         trt_lint=rep.as_dict())
            if spec.precision == "mixed-fp16":
                entry["fp16"] = fp16_summary(proto)
            graphs[name], paths[name] = entry, path
        bad = [f"{n}: {p}" for n, r in lints.items() for p in r.problems]
        if bad:
            raise UserError(f"TensorRT lint failed ({len(bad)} problem(s)), first: {bad[0]}")
        log("checking parity against PyTorch ...")
        backend = OrtBackend(graphs, paths)
        figures = parity.run_all(model, backend)
        manifest = {
            "format": FORMAT, "schema": SCHEMA, "toolkit_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "exported_on": {"host": platform.node(), "machine": platform.machine(), "torch": torch.__version__,
                            "onnx": onnx.__version__},
            "source": {"checkpoint": os.path.abspath(checkpoint), "sha256": sha256_file(checkpoint),
                       "data": info.get("data", {}), "train": info.get("train", {})},
            "model": to_dict(cfg),
            "data_shape": list(cfg.data_shape), "num_classes": cfg.num_classes,
            "class_names": info.get("data", {}).get("class_names", []),
            "m": cfg.m, "k": cfg.k,
            "edm": {"sigma_data": cfg.sigma_data, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO},
            "sampling": {"solver": solver, "steps": steps},
            "graphs": graphs,
            "parity": figures,
            "trt_lint": {"parser": TRT_PARSER_VERSION, "ok": True},
            "engines": {},
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, out: Path) -> None:
    """Put directory `new` at `out`; an old bundle there is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "bundle")
    os.replace(new, out)
    os.chmod(out, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def add_engines(out: Path, manifest: dict, log=print) -> dict:
    """Build, check and add TensorRT engines to the finished bundle at `out`."""
    from . import trt

    stamp = trt.require()
    cache = out / "timing.cache"
    engines, written = {}, []
    rng = np.random.default_rng(0)
    try:
        for name, entry in manifest["graphs"].items():
            log(f"building TensorRT engine for {name} ...")
            eng = out / f"{name}.engine"
            written.append(eng)
            trt.build_engine(out / entry["file"], entry, eng, cache)
            check = trt.check_engine(eng, entry, out / entry["file"], rng)
            engines[name] = {"file": eng.name, "sha256": sha256_file(eng), "source_graph": name,
                             "precision": entry["precision"], "check_vs_onnxruntime": check}
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise
    manifest = dict(manifest, engines=engines, tensorrt=stamp,
                    timing_cache={"file": cache.name, "sha256": sha256_file(cache)} if cache.exists() else None)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
