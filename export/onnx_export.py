"""ONNX export through torch.onnx (the torch.export-based exporter), then checks.

Each graph: batch is the only dynamic axis (named "B"), opset 18, constants folded by the exporter's
optimiser, `onnx.checker` (full check) and strict shape inference must pass. Weights are stored inline,
or, for a graph whose weights are larger than a threshold (a protobuf cannot exceed 2 GB), as ONNX
external data: `<name>.onnx` plus the one file the exporter writes beside it, `<name>.onnx.data`
(tensors of more than 256 bytes, packed in graph order). Such a graph is edited and checked through its
file, with `load_external_data=False`: its weights are never loaded into memory nor rewritten.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from discodiff.errors import UserError
from discodiff.networks import to_mixed_fp16
from discodiff.runtime.contract import GraphSpec

OPSET = 18
EXTERNAL_DATA_ABOVE_MIB = 1536      # weights above this (MiB) go to an external data file
MIB = 1 << 20


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and logs warnings about absent torchvision ops."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def weight_bytes(module: torch.nn.Module) -> int:
    """The module's parameters and buffers, in bytes, at their current dtypes (each shared tensor once)."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def wants_external_data(module: torch.nn.Module, above_mib: int = EXTERNAL_DATA_ABOVE_MIB) -> bool:
    """Whether `module`'s graph stores its weights as external data: weights above `above_mib` (0: always)."""
    return above_mib == 0 or weight_bytes(module) > above_mib * MIB


def data_file(path: Path) -> Path:
    """The external data file of graph `path`: the name torch.onnx.export(dynamo=True) gives it."""
    return path.with_name(path.name + ".data")


def external_locations(model: onnx.ModelProto) -> set[str]:
    """The files the graph's initializers are stored in, outside the graph file."""
    ext = onnx.TensorProto.EXTERNAL
    return {e.value for t in model.graph.initializer if t.data_location == ext for e in t.external_data
            if e.key == "location"}


def export_graph(module: torch.nn.Module, spec: GraphSpec, path: Path, example: dict[str, np.ndarray],
                 external_data: bool = False) -> onnx.ModelProto:
    """Export `module` (whose forward takes the spec's inputs as keywords) to `path` and check it; with
    `external_data`, its weights go to `data_file(path)`. Returns the graph, without external weights."""
    kwargs = {name: torch.from_numpy(example[name]) for name in (t.name for t in spec.inputs)}
    batch = torch.export.Dim("B", min=spec.batch.min, max=spec.batch.max)
    dynamic = {t.name: {i: batch for i, d in enumerate(t.shape) if d == "B"} for t in spec.inputs}
    module = module.eval()
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(module, (), str(path), kwargs=kwargs, input_names=[t.name for t in spec.inputs],
                              output_names=[t.name for t in spec.outputs], opset_version=OPSET, dynamo=True,
                              external_data=external_data, dynamic_shapes=dynamic, optimize=True)
    except OSError as e:  # a full disk or an unwritable folder: the OS error, naming the bundle file
        if not e.errno:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
    except Exception as e:  # noqa: BLE001 - exporter failures are many types; report one line
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError) and cause.errno:
            raise OSError(cause.errno, cause.strerror, str(path)) from e
        raise UserError(f"ONNX export of {spec.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    model = onnx.load(str(path), load_external_data=False)
    # torch also writes external data by itself above its own limit (1.5 GB of initializers): follow the files
    data, where = data_file(path), external_locations(model)
    if where - {data.name} or (where and not data.is_file()):
        raise UserError(f"the exporter stored the {spec.name} weights in {sorted(where)}, not in {data.name} "
                        "alone; this torch version writes external data differently")
    _strip_metadata(model)
    _name_batch_axis(model, spec)
    checked = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
    if not data.exists():
        try:
            onnx.checker.check_model(model, full_check=True)
            model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except checked as e:
            raise UserError(f"the exported {spec.name} graph fails the ONNX checker: {str(e).splitlines()[0][:300]}")
        onnx.save(model, str(path))
        return model
    onnx.save(model, str(path))   # the graph alone: tensors without data in memory are not written out
    try:   # through the file, so the weights stay on disk
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)
    except checked as e:
        raise UserError(f"the exported {spec.name} graph fails the ONNX checker: {str(e).splitlines()[0][:300]}")
    return onnx.load(str(path), load_external_data=False)


def _strip_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (source stack traces): most of the file otherwise."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    del model.metadata_props[:]


def _name_batch_axis(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give the batch axis the same name, "B", on every input and output; check the static axes."""
    io_specs = {t.name: t for t in spec.inputs + spec.outputs}
    for vi in list(model.graph.input) + list(model.graph.output):
        want = io_specs[vi.name].shape
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(want):
            raise UserError(f"{spec.name}: {vi.name} has rank {len(dims)}, the contract says {len(want)}")
        for d, w in zip(dims, want):
            if w == "B":
                d.dim_param = "B"
            elif d.HasField("dim_param") or d.dim_value != int(w):
                raise UserError(f"{spec.name}: {vi.name} axis is {d.dim_param or d.dim_value}, the contract says {w}")


@contextlib.contextmanager
def mixed_fp16(denoiser_graph: torch.nn.Module):
    """The denoiser wrapper with its trunk in fp16 (I/O, preconditioning, noise embedding, softmax and
    normalisation statistics stay float32, with explicit casts written by the modules), converted in
    place for the block and restored bit for bit after it: every parameter and buffer gets back its own
    float32 tensor, so the only extra memory is the fp16 copy of the trunk."""
    modules = list(denoiser_graph.denoiser.modules())
    params = [(m, k, p, p.data) for m in modules for k, p in m._parameters.items() if p is not None]
    buffers = [(m, k, b) for m in modules for k, b in m._buffers.items() if b is not None]
    try:
        to_mixed_fp16(denoiser_graph.denoiser)
        yield denoiser_graph
    finally:
        for m, k, p, data in params:
            m._parameters[k] = p   # the same Parameter objects, holding their original tensors
            p.data = data
        for m, k, b in buffers:
            m._buffers[k] = b


def fp16_summary(model: onnx.ModelProto) -> dict:
    """What the mixed-precision graph holds: initializer dtypes, casts, and ops that run in fp16."""
    f16 = onnx.TensorProto.FLOAT16
    inits = model.graph.initializer
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    fp16_ops: dict[str, int] = {}
    for node in model.graph.node:
        if node.output and types.get(node.output[0]) == f16 and node.op_type != "Cast":
            fp16_ops[node.op_type] = fp16_ops.get(node.op_type, 0) + 1
    fp32_islands = {op: sum(1 for n in model.graph.node if n.op_type == op and types.get(n.output[0]) == onnx.TensorProto.FLOAT)
                    for op in ("Softmax", "InstanceNormalization", "LayerNormalization", "ReduceMean", "Sin", "Cos")}
    return {
        "fp16_weights": sum(1 for t in inits if t.data_type == f16),
        "fp32_weights": sum(1 for t in inits if t.data_type == onnx.TensorProto.FLOAT),
        "casts": sum(1 for n in model.graph.node if n.op_type == "Cast"),
        "fp16_ops": dict(sorted(fp16_ops.items())),
        "fp32_ops": {k: v for k, v in fp32_islands.items() if v},
        "io_dtypes": sorted({onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
                             for vi in list(model.graph.input) + list(model.graph.output)}),
    }
