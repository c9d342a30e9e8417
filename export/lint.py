"""TensorRT compatibility lint that needs no TensorRT: it reads the ONNX graph only.

Checks, for every graph of a bundle:
- every op is one the TensorRT ONNX parser supports (the table below, with the version it came from);
- no control flow (If, Loop, Scan) and no scatter (ScatterND/ScatterElements/Scatter): the prior's KV
  cache is written by a masked blend precisely so that CUDA-graph capture and every backend take it;
- no int64 graph inputs or outputs (TensorRT binds int32; int64 I/O costs casts and copies);
- static shapes apart from the batch axis "B";
- opset within the parser's range.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

# Ops marked supported ("Y") in onnx-tensorrt docs/operators.md for TensorRT 10.1 GA
# (github.com/onnx/onnx-tensorrt, commit 96e7811, "ONNX-TensorRT 10.1 GA release"), opsets 9..20.
TRT_PARSER_VERSION = "TensorRT 10.1 ONNX parser (onnx-tensorrt 96e7811)"
TRT_OPSET_RANGE = (9, 20)
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())

# Supported by the parser, but refused here: they break CUDA-graph capture or static planning.
FORBIDDEN_OPS = frozenset({"If", "Loop", "Scan", "ScatterND", "ScatterElements", "Scatter", "NonZero"})


@dataclass
class LintReport:
    graph: str
    problems: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "ops": self.ops}


def lint(model: onnx.ModelProto, name: str, batch_axis: str = "B") -> LintReport:
    """Every TensorRT-compatibility problem of graph `model` (see the module docstring), without TensorRT."""
    rep = LintReport(name)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]:
        rep.problems.append(f"opset {opset} is outside {TRT_OPSET_RANGE[0]}..{TRT_OPSET_RANGE[1]} ({TRT_PARSER_VERSION})")
    for node in _all_nodes(model.graph):
        rep.ops[node.op_type] = rep.ops.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx"):
            rep.problems.append(f"node {node.name or node.op_type}: custom domain {node.domain!r} needs a plugin")
        elif node.op_type not in TRT_SUPPORTED_OPS:
            rep.problems.append(f"node {node.name or node.op_type}: op {node.op_type} is not supported by the "
                                f"{TRT_PARSER_VERSION}")
        elif node.op_type in FORBIDDEN_OPS:
            rep.problems.append(f"node {node.name or node.op_type}: {node.op_type} (control flow / scatter) is not "
                                "allowed: it blocks CUDA-graph capture")
    for vi in list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type == onnx.TensorProto.INT64:
            rep.problems.append(f"{vi.name} is int64; graph inputs and outputs must be int32 for TensorRT")
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_param") and d.dim_param != batch_axis or not (d.HasField("dim_param") or d.dim_value > 0):
                rep.problems.append(f"{vi.name} axis {axis} is dynamic ({d.dim_param or '?'}); only the batch axis may be")
    rep.ops = dict(sorted(rep.ops.items()))
    return rep


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # subgraphs of control-flow ops
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)
