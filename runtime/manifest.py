"""The bundle's manifest: the typed form of `manifest.json`, read and checked as a schema, its files
verified, and written back from the same types.

`Manifest.load(bundle)` refuses a bundle that does not hold together, with one `UserError` line that
says what to do: not this toolkit's format; a schema this runtime cannot read; a key missing or of the
wrong type or range; graph contracts that disagree with the model (data shape, m, k, classes); a file
missing or not matching its sha256. The graph files' own inputs and outputs are compared with these
contracts when a backend loads them; engine checks (TensorRT version, GPU) are made by the TensorRT
backend.

One home per key: each type reads its part of the manifest (`from_dict`) and writes it (`to_dict`):
`ModelMeta` (data_shape, num_classes, m, k, edm), `GraphSpec` (graphs.<name>), `Sampling` and `Fit`
(sampling, sampling.fitted.<nfe>), `Engine` (engines.<name>), `TimingCache` (timing_cache), and
`Manifest` (format, schema, class_names, tensorrt, and the rest). The exporter, discodiff-fit and
`discodiff-export --trt` build or change these objects and write `Manifest.to_dict()`; none of them
spells a key the runtime reads. What only people read is kept, as written, in `info` dicts: the
manifest's (provenance: toolkit_version, created, exported_on, source = checkpoint path, sha256, data
and training options, model = the model config; export measurements: parity, trt_lint, export = costs),
each graph's (opset, nodes, trt_lint, fp16), each engine's (source_graph, precision,
check_vs_onnxruntime) and each fit's (held-out errors, seeds, teacher, seconds).

Schema plan. `SCHEMA` is the layout this toolkit writes; it changes only for an incompatible change.
- Additive changes keep the number: a new key is optional, and its absence means what bundles without
  it did. The next issues add keys this way, e.g. a consistency student (sampling block: absent = an
  ODE model), int8 graphs (a new graphs entry with its own precision: absent = none), fixed-shape
  chunking (a graph or sampling key: absent = dynamic batch), latent groups (a top-level key: absent =
  no groups). A bundle exported with schema 2 therefore loads unchanged after them. New keys go at the
  top level, in a graph, engine or fit entry or in the sampling block: there a reader that does not
  know them keeps them in `info` and writes them back unchanged when it rewrites the manifest
  (discodiff-fit, --trt), so an older tool loses nothing. Tensor specs, batch ranges and the edm block
  have no such slot (an older tool's rewrite would drop a key there); a change there is a new schema.
- An incompatible change (a key renamed or its meaning changed, a graph's inputs changed so that an
  older reader would run it wrongly) raises SCHEMA by one and adds `MIGRATIONS[old]`, which rewrites an
  `old` document as `old + 1`. `migrate` chains them, so every older schema is read (in memory; the
  file is rewritten only by a tool that rewrites the manifest anyway, and then at the current schema).
  A bundle is never refused only for being older; one from a newer toolkit is refused (upgrade).
- Schema 1 (bundles exported before the sampling core was unified, Nov 2026) is read: its graphs are
  the same networks with the same inputs; it lacked the integer value ranges, which `_from_schema_1`
  adds from the model facts, and it wrote a graph's name, the prior's null label and cache sizes in its
  entries, which schema 2 derives and which are dropped.

What is read (the threat model in the README): only files directly inside the bundle, named by plain
names in the manifest (graphs, their external data, engines, the timing cache), each a regular file and
not a symbolic link, each hashed before anything parses it; a graph that points ONNX Runtime at a data
file the manifest does not declare is refused. The hashes prove the files are the ones the manifest
names; they do not prove who wrote the manifest.
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from discodiff.errors import UserError
from discodiff.jsonfile import parse_json
from discodiff.runtime.contract import GUIDANCE_BATCH, SHA256_HEX, ContractError, GraphSpec, ModelMeta, _expect, \
    _int, plain_name
from discodiff.runtime.onnx_refs import OnnxFormatError, external_locations
from discodiff.runtime.schedule import SCHEDULES
from discodiff.runtime.solvers import SOLVERS

FORMAT = "discodiff-bundle"
SCHEMA = 2
MANIFEST = "manifest.json"
REEXPORT = "re-export it with discodiff-export"
MODEL_GRAPHS = ("encoder", "prior_step", "prior_recompute")   # present when m > 0
MAX_MANIFEST_BYTES = 64 << 20       # real manifests are a few KB


class _ReadsAsJson(Mapping):
    """A record that also reads as its JSON form (`rec["file"]` = `rec.to_dict()["file"]`), for callers
    that take the block as a dict (the plan and the server take the sampling block so)."""

    def __getitem__(self, key):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def _rest(d: dict, known: tuple[str, ...]) -> dict:
    """The keys of `d` a type does not read: kept in its `info`, written back as they were."""
    return {k: v for k, v in d.items() if k not in known}


# ---------------------------------------------------------------------------------------------
# The parts of a manifest


@dataclass(eq=True)
class Fit(_ReadsAsJson):
    """A schedule fitted for `nfe` denoiser calls (`sampling.fitted.<nfe>`, written by runtime.fit)."""

    solver: str
    nfe: int
    sigmas: list[float]                 # strictly decreasing noise levels, ending in 0
    info: dict = field(default_factory=dict)   # held-out errors, seeds, teacher, seconds: for people

    KNOWN = ("solver", "nfe", "sigmas")

    def to_dict(self) -> dict:
        """The entry `sampling.fitted.<nfe>`."""
        return {"solver": self.solver, "nfe": self.nfe, "sigmas": list(self.sigmas), **self.info}

    @classmethod
    def from_dict(cls, key: str, d) -> "Fit":
        """Read and check `sampling.fitted.<key>`; `key` is the call count as a string."""
        where = f"sampling.fitted.{key}"
        _expect(isinstance(d, dict) and key.isascii() and key.isdigit(), where, "must be keyed by the number of calls")
        _expect(d.get("solver") in SOLVERS, where, f"unknown solver {d.get('solver')!r}")
        sig = d.get("sigmas")
        _expect(isinstance(sig, list) and len(sig) >= 2 and sig[-1] == 0
                and all(isinstance(v, (int, float)) and v >= 0 for v in sig)
                and all(a > b for a, b in zip(sig, sig[1:])), where, "sigmas must decrease strictly to 0")
        return cls(d["solver"], _int(d.get("nfe"), f"{where}.nfe", 1), list(sig), _rest(d, cls.KNOWN))


@dataclass(eq=True)
class Sampling(_ReadsAsJson):
    """The bundle's sampling defaults and fitted schedules (`sampling`). `runtime.plan` resolves a
    request against it; it also reads as the dict it is written as (`sampling["solver"]`)."""

    solver: str                         # default solver (one of solvers.SOLVERS)
    steps: int                          # default solver steps
    schedule: str = "edm"               # default levels: a schedule.SCHEDULES name or "fitted"
    fitted: dict[str, Fit] = field(default_factory=dict)   # by the call count, as a string (a JSON key)
    info: dict = field(default_factory=dict)               # keys this runtime does not know, kept as read

    KNOWN = ("solver", "steps", "schedule", "fitted")

    def to_dict(self) -> dict:
        """The `sampling` block."""
        return {"solver": self.solver, "steps": self.steps, "schedule": self.schedule,
                "fitted": {n: f.to_dict() for n, f in self.fitted.items()}, **self.info}

    @classmethod
    def from_dict(cls, s) -> "Sampling":
        """Read and check the `sampling` block (schedule defaults to "edm", fitted to none)."""
        _expect(isinstance(s, dict), "sampling", "must be an object")
        _expect(s.get("solver") in SOLVERS, "sampling.solver",
                f"must be one of {', '.join(SOLVERS)}, got {s.get('solver')!r}")
        steps = _int(s.get("steps"), "sampling.steps", 1)
        schedule = s.get("schedule", "edm")
        _expect(schedule in SCHEDULES + ("fitted",), "sampling.schedule", f"unknown schedule {schedule!r}")
        fitted = s.get("fitted", {})
        _expect(isinstance(fitted, dict), "sampling.fitted", "must be an object")
        return cls(s["solver"], steps, schedule, {n: Fit.from_dict(n, f) for n, f in fitted.items()},
                   _rest(s, cls.KNOWN))


@dataclass(eq=True)
class Engine(_ReadsAsJson):
    """A TensorRT engine built from a graph (`engines.<graph>`); hashed like the graphs."""

    file: str                           # plain name inside the bundle
    sha256: str
    info: dict = field(default_factory=dict)   # source_graph, precision, check_vs_onnxruntime: for people

    KNOWN = ("file", "sha256")

    def to_dict(self) -> dict:
        """The entry `engines.<graph>`."""
        return {"file": self.file, "sha256": self.sha256, **self.info}

    @classmethod
    def from_dict(cls, name: str, e) -> "Engine":
        """Read and check `engines.<name>`: a plain file name inside the bundle and its sha256."""
        where = f"engines.{name}"
        _expect(isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str),
                where, "needs file and sha256")
        _expect(plain_name(e["file"]) and e["file"] != MANIFEST, where,
                f"file {e['file']!r} is not a plain file name inside the bundle")
        _expect(SHA256_HEX.fullmatch(e["sha256"]) is not None, where, "sha256 must be 64 hex digits")
        return cls(e["file"], e["sha256"], _rest(e, cls.KNOWN))


@dataclass(eq=True)
class TimingCache(_ReadsAsJson):
    """TensorRT's timing cache (`timing_cache`): kept beside the engines so a rebuild is faster; never
    loaded by the runtime, so only its name is checked."""

    file: str
    sha256: str = ""

    def to_dict(self) -> dict:
        """The `timing_cache` block."""
        return {"file": self.file, **({"sha256": self.sha256} if self.sha256 else {})}

    @classmethod
    def from_dict(cls, c) -> "TimingCache":
        """Read and check `timing_cache`: a plain file name inside the bundle (and its sha256)."""
        _expect(isinstance(c, dict) and plain_name(c.get("file")) and c.get("file") != MANIFEST,
                "timing_cache", "file must be a plain file name inside the bundle")
        sha = c.get("sha256", "")
        _expect(isinstance(sha, str), "timing_cache", "sha256 must be a string")
        return cls(c["file"], sha)


# ---------------------------------------------------------------------------------------------
# The manifest


@dataclass
class Manifest:
    """A bundle's manifest, typed: what the runtime reads, and `info` for what only people read.

    Attributes:
        bundle: the bundle directory (not written in the manifest).
        meta: the model facts (data shape, m, k, classes, EDM constants).
        graphs: each graph's I/O contract, file and sha256, by name ("denoiser", "denoiser_fp16", ...).
        sampling: default solver, steps and schedule, and the fitted schedules.
        class_names: one per class, or empty.
        engines: TensorRT engines by graph name (empty until `discodiff-export --trt`).
        tensorrt: what the engines were built for, {"tensorrt", "gpu", "compute_capability"}
            (`backends.trt.gpu_stamp`), or None without engines.
        timing_cache: TensorRT's timing cache, or None.
        info: every other top-level key, as written (provenance, parity, lint, export costs, and keys a
            newer toolkit added); see the module docstring.
    """

    bundle: Path
    meta: ModelMeta
    graphs: dict[str, GraphSpec]
    sampling: Sampling
    class_names: list[str] = field(default_factory=list)
    engines: dict[str, Engine] = field(default_factory=dict)
    tensorrt: dict | None = None
    timing_cache: TimingCache | None = None
    info: dict = field(default_factory=dict)

    # ----------------------------------------------------------------------------------- reading
    @classmethod
    def load(cls, bundle: Path, verify: bool = True) -> "Manifest":
        """Read `bundle/manifest.json`, migrate it to this schema if older, check it and (with `verify`)
        hash every file it names. Raises `UserError` (one line) for a bundle that does not hold together."""
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
        check_schema(raw.get("schema"), bundle)
        try:
            man = cls.from_dict(bundle, migrate(raw))
        except (ContractError, KeyError, TypeError) as e:
            what = f"key {e} is missing" if isinstance(e, KeyError) else str(e)
            raise UserError(f"{path} is malformed ({what}); {REEXPORT}")
        if verify:
            man.verify()
        return man

    @classmethod
    def from_dict(cls, bundle: Path, raw: dict) -> "Manifest":
        """Read and check a manifest of this schema (`raw`, as JSON) for the bundle at `bundle`. A key
        the runtime needs that is missing raises KeyError; a wrong value ContractError. `raw` is not
        changed; keys not read here are kept in `info`."""
        for key in ModelMeta.KEYS + ("sampling", "graphs"):
            if key not in raw:
                raise KeyError(key)
        meta = ModelMeta.from_dict(raw)
        _expect(isinstance(raw["graphs"], dict), "graphs", "must be an object")
        graphs = {name: GraphSpec.from_dict(name, g) for name, g in raw["graphs"].items()}
        for g in graphs.values():
            _expect(MANIFEST not in g.external_data, f"graphs.{g.name}.external_data",
                    f"{MANIFEST!r} is not a plain file name inside the bundle")
        names = raw.get("class_names") or []
        _expect(isinstance(names, list) and all(isinstance(n, str) for n in names)
                and len(names) in (0, meta.num_classes), "class_names", f"must be {meta.num_classes} strings or empty")
        engines = raw.get("engines") or {}
        _expect(isinstance(engines, dict), "engines", "must be an object")
        stamp = raw.get("tensorrt")
        _expect(stamp is None or isinstance(stamp, dict), "tensorrt", "must be an object")
        cache = raw.get("timing_cache")
        own = ("format", "schema", *ModelMeta.KEYS, "graphs", "class_names", "sampling", "engines", "tensorrt",
               "timing_cache")
        man = cls(Path(bundle), meta, graphs, Sampling.from_dict(raw["sampling"]), list(names),
                  {name: Engine.from_dict(name, e) for name, e in engines.items()}, stamp,
                  None if cache is None else TimingCache.from_dict(cache), _rest(raw, own))
        _check_graphs(man)
        return man

    # ----------------------------------------------------------------------------------- writing
    def to_dict(self) -> dict:
        """The manifest as JSON, at this schema: what the exporter, discodiff-fit and --trt write."""
        d = {"format": FORMAT, "schema": SCHEMA, **self.meta.to_dict(), "class_names": list(self.class_names),
             "sampling": self.sampling.to_dict(), "graphs": {n: g.to_dict() for n, g in self.graphs.items()},
             "engines": {n: e.to_dict() for n, e in self.engines.items()}}
        if self.tensorrt is not None:
            d["tensorrt"] = dict(self.tensorrt)
        if self.timing_cache is not None:
            d["timing_cache"] = self.timing_cache.to_dict()
        return {**d, **self.info}

    @property
    def raw(self) -> dict:
        """The manifest as JSON (`to_dict()`), for callers that read it as a dict."""
        return self.to_dict()

    def verify(self) -> None:
        """Every file the manifest names is a regular file inside the bundle (no link) with its recorded
        sha256: graphs, their external data files, engines; and no graph refers ONNX Runtime to a data
        file the manifest does not declare for it."""
        for kind, entries in (("graph", self.graphs), ("engine", self.engines)):
            for name, entry in entries.items():
                declared = entry.external_data if kind == "graph" else {}
                for file, digest in {entry.file: entry.sha256, **declared}.items():
                    with open_inside(self.bundle, file, f"{kind} {name}") as f:
                        if _sha256(f) != digest:
                            raise UserError(f"{kind} {name}: {self.bundle / file} does not match its sha256 in the "
                                            f"manifest (the file was changed or damaged); {REEXPORT}")
                if kind == "graph":
                    _check_locations(self.bundle / entry.file, name, declared)

    # ----------------------------------------------------------------------------------- questions
    def graph(self, name: str) -> GraphSpec:
        """The graph `name`; one UserError line if the bundle has none."""
        if name not in self.graphs:
            raise UserError(f"the bundle {self.bundle} has no {name} graph; {REEXPORT}")
        return self.graphs[name]

    @property
    def sampling_batch_max(self) -> int:
        """The largest sampling batch: the denoiser graph takes GUIDANCE_BATCH x it (guidance halves)."""
        return self.graphs["denoiser"].batch.max // GUIDANCE_BATCH

    def files(self) -> set[str]:
        """Every file name the bundle consists of, the manifest included."""
        names = {MANIFEST} | {g.file for g in self.graphs.values()} | {e.file for e in self.engines.values()}
        names |= {f for g in self.graphs.values() for f in g.external_data}
        return names | ({self.timing_cache.file} if self.timing_cache is not None else set())


def bundle_files(raw) -> set[str] | None:
    """The file names a manifest document names (itself included), read leniently so that a damaged
    bundle can still be recognised and replaced; None if `raw` is not this toolkit's manifest at all."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None
    named = {MANIFEST}
    for kind in ("graphs", "engines"):
        entries = raw.get(kind)
        for e in (entries.values() if isinstance(entries, dict) else ()):
            if isinstance(e, dict):
                named |= {e.get("file", "")} | set(e.get("external_data") or {})
    if isinstance(raw.get("timing_cache"), dict):
        named.add(raw["timing_cache"].get("file", ""))
    return named


# ---------------------------------------------------------------------------------------------
# Older schemas


def check_schema(schema, bundle: Path) -> None:
    """One UserError line unless `schema` is one this runtime reads (1..SCHEMA, older ones migrated)."""
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise UserError(f"{bundle} has bundle schema {schema!r}, which no version of this toolkit wrote; {REEXPORT}")
    if schema > SCHEMA:
        raise UserError(f"{bundle} has bundle schema {schema}, written by a newer toolkit; this runtime reads "
                        f"schemas 1 to {SCHEMA}: upgrade discodiff, or {REEXPORT} from this toolkit version")


def _from_schema_1(raw: dict) -> dict:
    """Schema 1 -> 2: the same graphs; add the integer value ranges schema 2 declares, drop what schema 2
    derives (a graph entry's name = its key; the prior's null label and cache sizes). Parts that are not
    well formed are left for `Manifest.from_dict` to name."""
    meta = ModelMeta.from_dict(raw)
    values = {("denoiser", "tokens"): meta.code_values, ("denoiser", "class_labels"): meta.label_values,
              ("prior_step", "token"): meta.prior_input_values, ("prior_recompute", "tokens"): meta.prior_input_values}
    graphs = raw["graphs"]
    if isinstance(graphs, dict):
        graphs = {name: _graph_from_schema_1(name, g, values) for name, g in graphs.items()}
    sampling = raw["sampling"]
    if isinstance(sampling, dict):
        sampling = {"schedule": "edm", "fitted": {}, **sampling}
    return {**raw, "schema": 2, "graphs": graphs, "sampling": sampling}


def _graph_from_schema_1(name: str, g, values: dict) -> dict:
    if not isinstance(g, dict) or not isinstance(g.get("inputs"), list):
        return g
    kind = "denoiser" if name == "denoiser_fp16" else name
    inputs = [dict(t) if isinstance(t, dict) else t for t in g["inputs"]]
    by_name = {t.get("name"): t for t in inputs if isinstance(t, dict)}
    for (graph, tensor), v in values.items():
        if graph == kind and tensor in by_name:
            by_name[tensor].setdefault("values", list(v))
    cache = by_name.get("k_cache", {}).get("shape")
    if kind == "prior_step" and "pos" in by_name and isinstance(cache, list) and len(cache) == 5:
        by_name["pos"].setdefault("values", [0, cache[3] - 1])   # 0..max_len - 1; the cache is [L, B, H, T, Dh]
    return {**{k: v for k, v in g.items() if k not in ("name", "null_label", "cache")}, "inputs": inputs}


# MIGRATIONS[n] rewrites a schema-n manifest (as JSON) as schema n + 1; every older schema has one.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_schema_1}


def migrate(raw: dict) -> dict:
    """`raw` (a manifest as JSON, its schema checked by `check_schema`) rewritten at schema SCHEMA through
    each `MIGRATIONS` step; `raw` itself is not changed. A malformed older document raises what
    `Manifest.from_dict` raises (KeyError, TypeError, ContractError)."""
    schema = raw["schema"]
    while schema < SCHEMA:
        raw = MIGRATIONS[schema](raw)
        schema += 1
        _expect(raw.get("schema") == schema, "schema", f"migration to schema {schema} did not give it")
    return raw


# ---------------------------------------------------------------------------------------------
# Files inside the bundle


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
