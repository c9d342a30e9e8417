"""The bundle's manifest: read it, check it as a schema, verify its files, and answer questions about it.

`Manifest.load(bundle)` refuses a bundle that does not hold together, with one `UserError` line that
says what to do: not this toolkit's format or schema; a key missing or of the wrong type or range; graph
contracts that disagree with the model (data shape, m, k, classes); a file missing or not matching its
sha256. The graph files' own inputs and outputs are compared with these contracts when a backend loads
them; engine checks (TensorRT version, GPU) are made by the TensorRT backend.

What is read (the threat model in the README): only files directly inside the bundle, named by plain
names in the manifest (graphs, their external data, engines, the timing cache), each a regular file and
not a symbolic link, each hashed before anything parses it; a graph that points ONNX Runtime at a data
file the manifest does not declare is refused. The hashes prove the files are the ones the manifest
names; they do not prove who wrote the manifest.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from discodiff.errors import UserError
from discodiff.jsonfile import parse_json
from discodiff.runtime.contract import GUIDANCE_BATCH, ContractError, GraphSpec, ModelMeta, _expect, _int, plain_name
from discodiff.runtime.onnx_refs import OnnxFormatError, external_locations
from discodiff.runtime.schedule import SCHEDULES
from discodiff.runtime.solvers import SOLVERS

FORMAT = "discodiff-bundle"
SCHEMA = 2
MANIFEST = "manifest.json"
REEXPORT = "re-export it with discodiff-export"
MODEL_GRAPHS = ("encoder", "prior_step", "prior_recompute")   # present when m > 0
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 64 << 20       # real manifests are a few KB


@dataclass
class Manifest:
    bundle: Path
    meta: ModelMeta
    graphs: dict[str, GraphSpec]
    sampling: dict                      # {"solver", "steps", "schedule", "fitted": {nfe: {...}}}
    class_names: list[str]
    engines: dict[str, dict] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)   # the whole JSON, for what only people read (parity, source)

    # ----------------------------------------------------------------------------------- reading
    @classmethod
    def load(cls, bundle: Path, verify: bool = True) -> "Manifest":
        bundle = Path(bundle)
        path = bundle / MANIFEST
        if not bundle.exists():
            raise UserError(f"bundle {bundle} does not exist; create it with discodiff-train then discodiff-export, "
                            "or pass --bundle")
        if not path.exists() and not path.is_symlink():
            raise UserError(f"{bundle} has no {MANIFEST}, so it is not a bundle; {REEXPORT}")
        with open_inside(bundle, MANIFEST, "the manifest") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise UserError(f"{path} is {size >> 20} MiB, far larger than any manifest; {REEXPORT}")
            raw = parse_json(f.read(), str(path), REEXPORT)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise UserError(f"{path} is not a DisCo-Diff bundle manifest; {REEXPORT}")
        if raw.get("schema") != SCHEMA:
            raise UserError(f"{bundle} has bundle schema {raw.get('schema')!r}, this runtime reads schema {SCHEMA}; "
                            f"{REEXPORT} from this toolkit version")
        try:
            man = cls.from_dict(bundle, raw)
        except (ContractError, KeyError, TypeError) as e:
            what = f"key {e} is missing" if isinstance(e, KeyError) else str(e)
            raise UserError(f"{path} is malformed ({what}); {REEXPORT}")
        if verify:
            man.verify()
        return man

    @classmethod
    def from_dict(cls, bundle: Path, raw: dict) -> "Manifest":
        for key in ("data_shape", "num_classes", "m", "k", "edm", "sampling", "graphs"):
            if key not in raw:
                raise KeyError(key)
        _expect(isinstance(raw["edm"], dict), "edm", "must be an object")
        meta = ModelMeta.from_dict(raw, raw["edm"])
        _expect(isinstance(raw["graphs"], dict), "graphs", "must be an object")
        graphs = {name: GraphSpec.from_dict(name, g) for name, g in raw["graphs"].items()}
        for g in graphs.values():
            _check_external_data(g)
        names = raw.get("class_names") or []
        _expect(isinstance(names, list) and all(isinstance(n, str) for n in names)
                and len(names) in (0, meta.num_classes), "class_names", f"must be {meta.num_classes} strings or empty")
        engines = raw.get("engines") or {}
        _expect(isinstance(engines, dict), "engines", "must be an object")
        for name, e in engines.items():
            _expect(isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str),
                    f"engines.{name}", "needs file and sha256")
            _expect(plain_name(e["file"]) and e["file"] != MANIFEST, f"engines.{name}",
                    f"file {e['file']!r} is not a plain file name inside the bundle")
            _expect(SHA256_HEX.fullmatch(e["sha256"]) is not None, f"engines.{name}", "sha256 must be 64 hex digits")
        cache = raw.get("timing_cache")
        if cache is not None:
            _expect(isinstance(cache, dict) and plain_name(cache.get("file")) and cache.get("file") != MANIFEST,
                    "timing_cache", "file must be a plain file name inside the bundle")
        man = cls(bundle, meta, graphs, _check_sampling(raw["sampling"]), names, engines, raw)
        _check_graphs(man)
        return man

    def verify(self) -> None:
        """Every file the manifest names is a regular file inside the bundle (no link) with its recorded
        sha256: graphs, their external data files, engines; and no graph refers ONNX Runtime to a data
        file the manifest does not declare for it."""
        for kind, entries in (("graph", {n: g.to_dict() for n, g in self.graphs.items()}), ("engine", self.engines)):
            for name, entry in entries.items():
                declared = entry.get("external_data", {}) if kind == "graph" else {}
                for file, digest in {entry["file"]: entry["sha256"], **declared}.items():
                    with open_inside(self.bundle, file, f"{kind} {name}") as f:
                        if _sha256(f) != digest:
                            raise UserError(f"{kind} {name}: {self.bundle / file} does not match its sha256 in the "
                                            f"manifest (the file was changed or damaged); {REEXPORT}")
                if kind == "graph":
                    _check_locations(self.bundle / entry["file"], name, declared)

    # ----------------------------------------------------------------------------------- questions
    def graph(self, name: str) -> GraphSpec:
        if name not in self.graphs:
            raise UserError(f"the bundle {self.bundle} has no {name} graph; {REEXPORT}")
        return self.graphs[name]

    @property
    def sampling_batch_max(self) -> int:
        """The largest sampling batch: the denoiser graph takes GUIDANCE_BATCH x it (guidance halves)."""
        return self.graphs["denoiser"].batch.max // GUIDANCE_BATCH

    def files(self) -> set[str]:
        """Every file name the bundle consists of, the manifest included."""
        names = {MANIFEST} | {g.file for g in self.graphs.values()} | {e["file"] for e in self.engines.values()}
        names |= {f for g in self.graphs.values() for f in g.info.get("external_data", {})}
        cache = self.raw.get("timing_cache")
        return names | ({cache["file"]} if isinstance(cache, dict) and "file" in cache else set())


def open_inside(bundle: Path, file: str, what: str):
    """`bundle/file` opened for reading if it is a regular file there and not a symbolic link (checked on
    the opened descriptor, so nothing can swap it in between); else one UserError line. A FIFO or a
    device is refused without blocking on it."""
    path = Path(bundle) / file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{what}: {path} is missing from the bundle; {REEXPORT}") from None
    except OSError as e:
        if path.is_symlink():
            raise UserError(f"{what}: {path} is a symbolic link; a bundle's files must be inside it, so it is not "
                            f"read; replace the link by the file, or {REEXPORT}") from None
        raise UserError(f"{what}: {path} cannot be read ({e.strerror}); {REEXPORT}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{what}: {path} is not a regular file; {REEXPORT}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _sha256(f, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def _check_locations(path: Path, graph: str, declared: dict) -> None:
    """The graph's external-data locations are exactly files the manifest declares (and hashed) for it."""
    try:
        locations = external_locations(path)
    except (OnnxFormatError, OSError) as e:
        raise UserError(f"graph {graph}: {path} is not a readable ONNX graph ({e}); {REEXPORT}") from None
    for loc in sorted(locations):
        if loc not in declared:
            raise UserError(f"graph {graph}: {path.name} loads its weights from {loc!r}, which the manifest does not "
                            f"declare (or hash) for it, so it is not loaded; {REEXPORT}")


def load_manifest(bundle: Path, verify: bool = True) -> Manifest:
    """Read, check and (with `verify`) hash-check the bundle at `bundle`; one UserError line if anything is off."""
    return Manifest.load(bundle, verify)


# ---------------------------------------------------------------------------------------------
# Schema checks beyond single fields


def _check_sampling(s: dict) -> dict:
    _expect(isinstance(s, dict), "sampling", "must be an object")
    _expect(s.get("solver") in SOLVERS, "sampling.solver", f"must be one of {', '.join(SOLVERS)}, got {s.get('solver')!r}")
    _int(s.get("steps"), "sampling.steps", 1)
    schedule = s.setdefault("schedule", "edm")
    _expect(schedule in SCHEDULES + ("fitted",), "sampling.schedule", f"unknown schedule {schedule!r}")
    fitted = s.setdefault("fitted", {})
    _expect(isinstance(fitted, dict), "sampling.fitted", "must be an object")
    for key, fit in fitted.items():
        where = f"sampling.fitted.{key}"
        _expect(isinstance(fit, dict) and key.isascii() and key.isdigit(), where, "must be keyed by the number of calls")
        _expect(fit.get("solver") in SOLVERS, where, f"unknown solver {fit.get('solver')!r}")
        sig = fit.get("sigmas")
        _expect(isinstance(sig, list) and len(sig) >= 2 and sig[-1] == 0
                and all(isinstance(v, (int, float)) and v >= 0 for v in sig)
                and all(a > b for a, b in zip(sig, sig[1:])), where, "sigmas must decrease strictly to 0")
        _int(fit.get("nfe"), f"{where}.nfe", 1)
    return s


def _check_external_data(g: GraphSpec) -> None:
    """`external_data`, where a graph keeps its weights outside its file: {plain file name: sha256 hex}."""
    if "external_data" not in g.info:
        return
    ext = g.info["external_data"]
    _expect(isinstance(ext, dict) and ext, f"graphs.{g.name}.external_data",
            "must map the graph's weights files to their sha256")
    for file, digest in ext.items():
        _expect(plain_name(file) and file not in (MANIFEST, g.file), f"graphs.{g.name}.external_data",
                f"{file!r} is not a plain file name inside the bundle")
        _expect(isinstance(digest, str) and SHA256_HEX.fullmatch(digest) is not None,
                f"graphs.{g.name}.external_data", f"the sha256 of {file} must be 64 hex digits")


def _shape(g: GraphSpec, kind: str, name: str) -> list:
    try:
        return (g.input if kind == "input" else g.output)(name).shape
    except StopIteration:
        raise ContractError(f"graphs.{g.name}: has no {kind} {name!r}") from None


def _check_graphs(man: Manifest) -> None:
    """The graphs agree with the model: names, shapes, integer ranges, and the set of graphs."""
    meta, graphs = man.meta, man.graphs
    shape = ["B", *meta.data_shape]
    _expect("denoiser" in graphs, "graphs", "has no denoiser graph")
    for name in ("denoiser", "denoiser_fp16"):
        if name not in graphs:
            continue
        g = graphs[name]
        want = ["x", "sigma"] + (["tokens"] if meta.m else []) + (["class_labels"] if meta.num_classes else [])
        _expect(g.input_names == want, f"graphs.{name}", f"takes {g.input_names}, the model needs {want}")
        _expect(_shape(g, "input", "x") == shape and _shape(g, "output", "denoised") == shape, f"graphs.{name}",
                f"x / denoised shapes do not match data_shape {list(meta.data_shape)}")
        _expect(_shape(g, "input", "sigma") == ["B"], f"graphs.{name}", "sigma must be [B]")
        if meta.m:
            _expect(_shape(g, "input", "tokens") == ["B", meta.m], f"graphs.{name}", f"tokens do not match m={meta.m}")
            _expect(g.input("tokens").values in (None, (0, meta.null_code)), f"graphs.{name}",
                    f"tokens values must be 0..{meta.null_code} (k={meta.k} codes and the null code)")
        if meta.num_classes:
            _expect(g.input("class_labels").values in (None, (0, meta.num_classes - 1)), f"graphs.{name}",
                    f"class_labels values must be 0..{meta.num_classes - 1}")
        _expect(g.batch.max >= GUIDANCE_BATCH, f"graphs.{name}.batch", f"max must be >= {GUIDANCE_BATCH}")
    if not meta.m:
        return
    for name in MODEL_GRAPHS:
        _expect(name in graphs, "graphs", f"m={meta.m} but there is no {name} graph")
    _expect(_shape(graphs["encoder"], "input", "x") == shape, "graphs.encoder", "x does not match data_shape")
    _expect(_shape(graphs["encoder"], "output", "logits") == ["B", meta.m, meta.k], "graphs.encoder",
            f"logits do not match m={meta.m}, k={meta.k}")
    step = graphs["prior_step"]
    _expect(_shape(step, "output", "logits") == ["B", meta.k], "graphs.prior_step", f"logits do not match k={meta.k}")
    cache = _shape(step, "input", "k_cache")
    _expect(len(cache) == 5 and cache[1] == "B" and cache[3] == meta.m and _shape(step, "input", "v_cache") == cache
            and _shape(step, "output", "k_cache_out") == cache, "graphs.prior_step",
            f"the KV cache must be [layers, B, heads, m={meta.m}, head_dim] in and out")
    _expect(_shape(graphs["prior_recompute"], "input", "tokens") == ["B", meta.m], "graphs.prior_recompute",
            f"tokens do not match m={meta.m}")
    _expect(_shape(graphs["prior_recompute"], "output", "logits") == ["B", meta.m, meta.k], "graphs.prior_recompute",
            f"logits do not match m={meta.m}, k={meta.k}")
