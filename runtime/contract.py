"""The bundle contract: what every graph takes and gives, and the model facts sampling needs.

Torch-free; the exporter writes these types, the runtime, the backends and the TensorRT builder read
them. Each concept has one home here:

- the EDM sampling range (Karras et al. 2022, Table 1): SIGMA_MIN, SIGMA_MAX, RHO;
- the null latent: code `k` of each latent (`ModelMeta.null_code`), the denoiser's "latent dropped";
- the prior's null label: id `num_classes` (`ModelMeta.null_label`), "no class" at position 0;
- the guidance batch rule: classifier-free guidance runs the conditional and the null half in one
  denoiser call, so the denoiser graph takes GUIDANCE_BATCH x the sampling batch.

A graph's tensors are `TensorSpec`s: numpy dtype name, shape with "B" on the batch axis (the only
dynamic axis), and for integer inputs the inclusive range of valid values (`ModelMeta.code_values`,
`label_values`, `prior_input_values`: the ranges export declares and a schema-1 manifest is given).

Each type reads its manifest entry (`from_dict`, raising `ContractError`) and writes it (`to_dict`), so
the exporter and the runtime spell every key in one place; `runtime.manifest` assembles them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
GUIDANCE_BATCH = 2
BATCH = "B"
DTYPES = ("float32", "float16", "int32")
PRECISIONS = ("fp32", "mixed-fp16")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def null_code(k: int) -> int:
    """Each latent's codebook has k codes and one more, index k, for "latent dropped"."""
    return k


def null_label(num_classes: int) -> int:
    """The prior reads labels 0..num_classes-1 and, at index num_classes, "no class"."""
    return num_classes


def plain_name(name) -> bool:
    """A file name that can only mean a file directly inside the bundle: no folder part, no parent."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


class ContractError(ValueError):
    """A contract that does not hold together (raised while reading; callers turn it into one line)."""


def _expect(cond: bool, where: str, what: str) -> None:
    """Raise ContractError("where: what") unless `cond`."""
    if not cond:
        raise ContractError(f"{where}: {what}")


def _int(v, where: str, low: int = 0) -> int:
    """`v` if it is an integer (not a bool) >= low, else ContractError."""
    _expect(isinstance(v, int) and not isinstance(v, bool) and v >= low, where, f"must be an integer >= {low}, got {v!r}")
    return v


def _float(v, where: str, positive: bool = True) -> float:
    """`v` as a float if it is a finite number (positive unless told otherwise), else ContractError."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
    _expect(ok, where, f"must be a finite {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


# ---------------------------------------------------------------------------------------------
# Model facts


@dataclass(frozen=True)
class ModelMeta:
    """What sampling needs to know about a model, whichever backend runs it.

    In the manifest these are the top-level keys `KEYS`: data_shape, num_classes, m, k and the `edm`
    block (sigma_data and the sampling range sigma_min, sigma_max, rho).
    """

    data_shape: tuple[int, ...]     # (D,) vectors or (C, H, W) images
    m: int                          # discrete latents (0: plain EDM)
    k: int                          # codes per latent
    num_classes: int                # 0: unconditional
    sigma_data: float = 0.5
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO

    KEYS = ("data_shape", "num_classes", "m", "k", "edm")   # the manifest's top-level keys it reads and writes

    @property
    def null_code(self) -> int:
        """The code that means "latent dropped" (the denoiser's unconditional input, for guidance)."""
        return null_code(self.k)

    @property
    def null_label(self) -> int:
        """The prior's position-0 id for "no class" (every sample of an unconditional model)."""
        return null_label(self.num_classes)

    @property
    def is_image(self) -> bool:
        """True for (C, H, W) images, False for (D,) vectors."""
        return len(self.data_shape) == 3

    # valid values of the graphs' integer inputs (inclusive), as export declares them
    @property
    def code_values(self) -> tuple[int, int]:
        """The denoiser's `tokens`: k codes and the null code."""
        return 0, self.null_code

    @property
    def label_values(self) -> tuple[int, int]:
        """The denoiser's `class_labels` (conditional models only)."""
        return 0, self.num_classes - 1

    @property
    def prior_input_values(self) -> tuple[int, int]:
        """The prior's input tokens: position 0 takes a label (0..num_classes, the last the null label),
        later positions a code (0..k-1)."""
        return 0, max(self.null_label, self.k - 1)

    @classmethod
    def from_dict(cls, d: dict, edm: dict | None = None) -> "ModelMeta":
        """Read the manifest's model keys from `d` (the whole manifest); `edm` defaults to d["edm"].
        A missing key raises KeyError, a wrong value ContractError."""
        edm = d["edm"] if edm is None else edm
        _expect(isinstance(edm, dict), "edm", "must be an object")
        shape = d["data_shape"]
        _expect(isinstance(shape, list) and len(shape) in (1, 3), "data_shape", "must be [D] or [C, H, W]")
        shape = tuple(_int(s, "data_shape", 1) for s in shape)
        meta = cls(shape, _int(d["m"], "m"), _int(d["k"], "k", 2), _int(d["num_classes"], "num_classes"),
                   _float(edm["sigma_data"], "edm.sigma_data"), _float(edm["sigma_min"], "edm.sigma_min"),
                   _float(edm["sigma_max"], "edm.sigma_max"), _float(edm["rho"], "edm.rho"))
        _expect(meta.sigma_min < meta.sigma_max, "edm", "sigma_min must be below sigma_max")
        return meta

    def to_dict(self) -> dict:
        """The manifest's model keys (`KEYS`), as `from_dict` reads them."""
        return {"data_shape": list(self.data_shape), "num_classes": self.num_classes, "m": self.m, "k": self.k,
                "edm": self.edm_dict()}

    def edm_dict(self) -> dict:
        """The `edm` block: sigma_data and the sampling range."""
        return {"sigma_data": self.sigma_data, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}


# ---------------------------------------------------------------------------------------------
# Tensors and graphs


@dataclass
class TensorSpec:
    """One input or output of a graph."""

    name: str
    dtype: str                            # numpy dtype name: float32, float16, int32
    shape: list                           # ints, and "B" on the batch axis
    values: tuple[int, int] | None = None  # integer inputs: inclusive range of valid values

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape at batch size `batch` ("B" replaced by it)."""
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    @property
    def batched(self) -> bool:
        """Whether the tensor has a batch axis (the prior step's `pos` has none)."""
        return BATCH in self.shape

    def to_dict(self) -> dict:
        """The manifest entry: name, dtype, shape, and values when declared."""
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.values is not None:
            d["values"] = list(self.values)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TensorSpec":
        """Read and check a manifest entry; `where` names it in a ContractError. Unknown keys are ignored."""
        _expect(isinstance(d, dict), where, "must be an object")
        name, dtype, shape = d.get("name"), d.get("dtype"), d.get("shape")
        _expect(isinstance(name, str) and name != "", where, "needs a name")
        where = f"{where} {name}"
        _expect(dtype in DTYPES, where, f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        _expect(isinstance(shape, list) and shape.count(BATCH) <= 1, where, "shape must be a list with at most one 'B'")
        for s in shape:
            _expect(s == BATCH or (isinstance(s, int) and not isinstance(s, bool) and s >= 1), where,
                    f"shape entries must be 'B' or positive integers, got {s!r}")
        values = d.get("values")
        if values is not None:
            _expect(isinstance(values, list) and len(values) == 2 and all(isinstance(v, int) for v in values)
                    and values[0] <= values[1], where, "values must be [low, high] integers")
            values = (values[0], values[1])
        return cls(name, dtype, shape, values)


@dataclass
class BatchRange:
    """A graph's batch sizes: min <= opt <= max (the TensorRT profile; ONNX Runtime takes min..max)."""

    min: int
    opt: int
    max: int

    def to_dict(self) -> dict:
        """{"min", "opt", "max"}."""
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "BatchRange":
        """Read and check {"min", "opt", "max"}; `where` names it in a ContractError."""
        _expect(isinstance(d, dict) and all(k in d for k in ("min", "opt", "max")), where, "needs min, opt and max")
        r = cls(_int(d["min"], f"{where}.min", 1), _int(d["opt"], f"{where}.opt", 1), _int(d["max"], f"{where}.max", 1))
        _expect(r.min <= r.opt <= r.max, where, f"must have min <= opt <= max, got {r.to_dict()}")
        return r


@dataclass
class GraphSpec:
    """One exported network's I/O contract: export, the TensorRT profile, the backends' buffers and
    input checks, and the parity feeds all read this one description. In the manifest it is the entry
    `graphs.<name>`: the fields below, then `info`'s keys beside them."""

    name: str                           # manifest key and file stem
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch: BatchRange
    precision: str = "fp32"             # "fp32" | "mixed-fp16"
    file: str = ""                      # in the bundle, with its sha256
    sha256: str = ""
    info: dict = field(default_factory=dict)   # what only people read (export's opset, nodes, lint, fp16
    #                                            summary) and any key this runtime does not know, kept as read
    external_data: dict[str, str] = field(default_factory=dict)   # {weights file beside it: sha256}; {} = none

    def input(self, name: str) -> TensorSpec:
        """The input called `name` (StopIteration if there is none)."""
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        """The output called `name` (StopIteration if there is none)."""
        return next(t for t in self.outputs if t.name == name)

    @property
    def input_names(self) -> list[str]:
        """The input names, in the graph's order."""
        return [t.name for t in self.inputs]

    def to_dict(self) -> dict:
        """The manifest entry `graphs.<name>` (the name is its key, not written in it)."""
        d = {"file": self.file, "sha256": self.sha256, "inputs": [t.to_dict() for t in self.inputs],
             "outputs": [t.to_dict() for t in self.outputs], "batch": self.batch.to_dict(), "precision": self.precision}
        if self.external_data:
            d["external_data"] = dict(self.external_data)
        return {**d, **self.info}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "GraphSpec":
        """Read and check the manifest entry `graphs.<name>`: its keys, types and ranges, and that every
        file it names is a plain name inside the bundle. Keys it does not know go to `info`."""
        where = f"graphs.{name}"
        _expect(isinstance(d, dict), where, "must be an object")
        known = ("file", "sha256", "inputs", "outputs", "batch", "precision")
        for key in known:
            _expect(key in d, where, f"has no {key!r}")
        _expect(plain_name(d["file"]), where, "file must be a plain file name inside the bundle")
        _expect(isinstance(d["sha256"], str) and len(d["sha256"]) == 64, where, "sha256 must be 64 hex digits")
        _expect(d["precision"] in PRECISIONS, where, f"unknown precision {d['precision']!r}")
        for kind in ("inputs", "outputs"):
            _expect(isinstance(d[kind], list) and d[kind], where, f"{kind} must be a non-empty list")
        external = _external_data(d, where)
        return cls(name, [TensorSpec.from_dict(t, f"{where} input") for t in d["inputs"]],
                   [TensorSpec.from_dict(t, f"{where} output") for t in d["outputs"]],
                   BatchRange.from_dict(d["batch"], f"{where}.batch"), d["precision"], d["file"], d["sha256"],
                   {k: v for k, v in d.items() if k not in known and k != "external_data"}, external)

    def sample_feeds(self, rng: np.random.Generator, batch: int, sigma_data: float = 1.0,
                     sigmas: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Random valid inputs at `batch`: integer inputs uniform over their declared values; `sigma`
        log-uniform over the EDM range (or `sigmas`); `x` Gaussian at the scale of noisy data at that
        sigma, sqrt(sigma^2 + sigma_data^2), when the graph takes a sigma; other floats standard normal."""
        feeds: dict[str, np.ndarray] = {}
        if "sigma" in self.input_names:
            s = (np.exp(rng.uniform(np.log(SIGMA_MIN), np.log(SIGMA_MAX), size=batch)) if sigmas is None
                 else np.asarray(sigmas, np.float64))
            feeds["sigma"] = s.astype(np.float32)
        for t in self.inputs:
            shape = t.concrete(batch)
            if t.name == "sigma":
                continue
            if t.dtype == "int32":
                lo, hi = t.values if t.values is not None else (0, 1)
                feeds[t.name] = rng.integers(lo, hi + 1, size=shape).astype(np.int32)
            elif t.name == "x" and "sigma" in feeds:
                scale = np.sqrt(feeds["sigma"].astype(np.float64) ** 2 + sigma_data**2).reshape((-1,) + (1,) * (len(shape) - 1))
                feeds[t.name] = (rng.standard_normal(shape) * scale).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return {t.name: feeds[t.name] for t in self.inputs}


def _external_data(d: dict, where: str) -> dict[str, str]:
    """`external_data`, where a graph keeps its weights outside its file: {plain file name: sha256 hex},
    never empty when present, never the graph's own file. (The manifest refuses its own name there.)"""
    if "external_data" not in d:
        return {}
    ext, where = d["external_data"], f"{where}.external_data"
    _expect(isinstance(ext, dict) and ext, where, "must map the graph's weights files to their sha256")
    for file, digest in ext.items():
        _expect(plain_name(file) and file != d["file"], where, f"{file!r} is not a plain file name inside the bundle")
        _expect(isinstance(digest, str) and SHA256_HEX.fullmatch(digest) is not None, where,
                f"the sha256 of {file} must be 64 hex digits")
    return dict(ext)
