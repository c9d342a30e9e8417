"""ONNX export through torch.onnx (the torch.export-based exporter), then checks.

Each graph: batch is the only dynamic axis (named "B"), opset 18, constants folded by the exporter's
optimiser, `onnx.checker` (full check) and strict shape inference must pass, weights stored inline.
"""
from __future__ import annotations

import contextlib
import copy
import io
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


def export_graph(module: torch.nn.Module, spec: GraphSpec, path: Path, example: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Export `module` (whose forward takes the spec's inputs as keywords) to `path` and check it."""
    kwargs = {name: torch.from_numpy(example[name]) for name in (t.name for t in spec.inputs)}
    batch = torch.export.Dim("B", min=spec.batch.min, max=spec.batch.max)
    dynamic = {t.name: {i: batch for i, d in enumerate(t.shape) if d == "B"} for t in spec.inputs}
    module = module.eval()
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(module, (), str(path), kwargs=kwargs, input_names=[t.name for t in spec.inputs],
                              output_names=[t.name for t in spec.outputs], opset_version=OPSET, dynamo=True,
                              external_data=False, dynamic_shapes=dynamic, optimize=True)
    except OSError as e:  # a full disk or an unwritable folder: the OS error, naming the bundle file
        if not e.errno:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
    except Exception as e:  # noqa: BLE001 - exporter failures are many types; report one line
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError) and cause.errno:
            raise OSError(cause.errno, cause.strerror, str(path)) from e
        raise UserError(f"ONNX export of {spec.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    model = onnx.load(str(path))
    _strip_metadata(model)
    _name_batch_axis(model, spec)
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UserError(f"the exported {spec.name} graph fails the ONNX checker: {str(e).splitlines()[0][:300]}")
    onnx.save(model, str(path))
    return model


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


def mixed_fp16_copy(denoiser_graph: torch.nn.Module) -> torch.nn.Module:
    """The denoiser wrapper with its trunk in fp16 (I/O, preconditioning, noise embedding, softmax and
    normalisation statistics stay float32, with explicit casts written by the modules)."""
    g = copy.deepcopy(denoiser_graph)
    to_mixed_fp16(g.denoiser)
    return g


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
