"""The bundle's manifest: reading it and refusing a bundle that does not hold together.

Checks: the manifest parses and has this toolkit's format and schema; every file it names exists and
has the recorded sha256; the graphs' input and output shapes agree with the model's data shape, m, k
and classes. Engine checks (TensorRT version, GPU) are made by the TensorRT backend when it loads.
Each failure is one `UserError` line saying what to do.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import sha256_file
from ..errors import UserError

FORMAT = "discodiff-bundle"
SCHEMA = 1
MANIFEST = "manifest.json"
REEXPORT = "re-export it with discodiff-export"


def load_manifest(bundle: Path, verify: bool = True) -> dict:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.exists():
        raise UserError(f"bundle {bundle} does not exist; create it with discodiff-train then discodiff-export, "
                        "or pass --bundle")
    if not path.is_file():
        raise UserError(f"{bundle} has no {MANIFEST}, so it is not a bundle; {REEXPORT}")
    try:
        man = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); {REEXPORT}")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise UserError(f"{path} is not a DisCo-Diff bundle manifest; {REEXPORT}")
    if man.get("schema") != SCHEMA:
        raise UserError(f"{bundle} has bundle schema {man.get('schema')}, this runtime reads schema {SCHEMA}; "
                        f"{REEXPORT} from the same toolkit version")
    try:
        _check_keys(man)
        _check_shapes(man)
    except (KeyError, TypeError, ValueError, StopIteration) as e:
        raise UserError(f"{path} is malformed ({type(e).__name__}: {e}); {REEXPORT}")
    if verify:
        for kind in ("graphs", "engines"):
            for name, entry in (man.get(kind) or {}).items():
                verify_file(bundle, entry, f"{kind[:-1]} {name}")
    return man


def verify_file(bundle: Path, entry: dict, what: str) -> Path:
    f = bundle / entry["file"]
    if not f.is_file():
        raise UserError(f"{what}: {f} is missing from the bundle; {REEXPORT}")
    if sha256_file(f) != entry["sha256"]:
        raise UserError(f"{what}: {f} does not match its sha256 in the manifest (the file was changed or damaged); "
                        f"{REEXPORT}")
    return f


REQUIRED = ("data_shape", "num_classes", "m", "k", "edm", "sampling", "graphs")
REQUIRED_EDM = ("sigma_min", "sigma_max", "rho")
REQUIRED_GRAPH = ("file", "sha256", "inputs", "outputs", "batch", "precision")


def _check_keys(man: dict) -> None:
    for key in REQUIRED:
        if key not in man:
            raise KeyError(key)
    for key in REQUIRED_EDM:
        if key not in man["edm"]:
            raise KeyError(f"edm.{key}")
    for key in ("solver", "steps"):
        if key not in man["sampling"]:
            raise KeyError(f"sampling.{key}")
    for kind, needed in (("graphs", REQUIRED_GRAPH), ("engines", ("file", "sha256"))):
        for name, entry in (man.get(kind) or {}).items():
            for key in needed:
                if key not in entry:
                    raise KeyError(f"{kind}.{name}.{key}")


def _io(entry: dict, kind: str, name: str) -> list:
    return next(t for t in entry[kind] if t["name"] == name)["shape"]


def _check_shapes(man: dict) -> None:
    shape, m, k, classes = list(man["data_shape"]), int(man["m"]), int(man["k"]), int(man["num_classes"])
    graphs = man["graphs"]
    if "denoiser" not in graphs:
        raise ValueError("no denoiser graph")
    for name in ("denoiser", "denoiser_fp16"):
        if name not in graphs:
            continue
        g = graphs[name]
        names = [t["name"] for t in g["inputs"]]
        want = ["x", "sigma"] + (["tokens"] if m else []) + (["class_labels"] if classes else [])
        if names != want:
            raise ValueError(f"{name} takes {names}, the model needs {want}")
        if _io(g, "inputs", "x") != ["B", *shape] or _io(g, "outputs", "denoised") != ["B", *shape]:
            raise ValueError(f"{name} shapes do not match data_shape {shape}")
        if m and _io(g, "inputs", "tokens") != ["B", m]:
            raise ValueError(f"{name} tokens shape does not match m={m}")
    if m:
        for name in ("encoder", "prior_step", "prior_recompute"):
            if name not in graphs:
                raise ValueError(f"m={m} but no {name} graph")
        if _io(graphs["prior_step"], "outputs", "logits") != ["B", k]:
            raise ValueError(f"prior_step logits do not match k={k}")
        if _io(graphs["prior_recompute"], "inputs", "tokens") != ["B", m]:
            raise ValueError(f"prior_recompute tokens do not match m={m}")
