"""The TensorRT compatibility lint, on planted problems and on the exported graphs."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from discodiff.export import lint as lint_mod
from tests.helpers import GRAPHS, read_manifest


@pytest.fixture(params=("toy8", "shapes"))
def bundle(request, tiny):
    return tiny.bundle(request.param)


def _model(nodes, inputs, outputs, opset=18, extra_opsets=(), initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    ops = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in extra_opsets]]
    return helper.make_model(graph, opset_imports=ops)


def _vi(name, dtype=TensorProto.FLOAT, shape=("B", 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_lint_accepts_a_clean_graph():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    onnx.checker.check_model(m)
    rep = lint_mod.lint(m, "clean")
    assert rep.ok and rep.problems == [] and rep.ops == {"Relu": 1}


@pytest.mark.parametrize("case", ["unique", "custom_domain", "scatternd", "loop", "nested_unique", "int64_input",
                                  "int64_output", "dynamic_axis", "unknown_axis", "opset"])
def test_lint_catches_planted_problem(case):
    x, y = _vi("x"), _vi("y")
    if case == "unique":
        m, want = _model([helper.make_node("Unique", ["x"], ["y"])], [x], [y]), "Unique"
    elif case == "custom_domain":
        m = _model([helper.make_node("MyOp", ["x"], ["y"], domain="com.example")], [x], [y], extra_opsets=["com.example"])
        want = "custom domain"
    elif case == "scatternd":
        idx = helper.make_tensor("idx", TensorProto.INT64, [1, 1], [0])
        upd = helper.make_tensor("upd", TensorProto.FLOAT, [1, 4], [1, 2, 3, 4])
        m = _model([helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"])], [x], [y], initializers=[idx, upd])
        want = "ScatterND"
    elif case in ("loop", "nested_unique"):
        inner = "Unique" if case == "nested_unique" else "Identity"
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node(inner, ["x"], ["x_out"])],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("x_out")])
        trip = helper.make_tensor("trip", TensorProto.INT64, [], [2])
        cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
        loop = helper.make_node("Loop", ["trip", "cond"], ["y"], body=body)
        m = _model([loop], [x], [y], initializers=[trip, cond])
        want = "Loop" if case == "loop" else "Unique"
    elif case == "int64_input":
        m = _model([helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)], [_vi("t", TensorProto.INT64)], [y])
        want = "int64"
    elif case == "int64_output":
        m = _model([helper.make_node("Cast", ["x"], ["t"], to=TensorProto.INT64)], [x], [_vi("t", TensorProto.INT64)])
        want = "int64"
    elif case == "dynamic_axis":
        m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=("B", "N"))], [_vi("y", shape=("B", "N"))])
        want = "axis 1 is dynamic"
    elif case == "unknown_axis":
        m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=("B", None))], [y])
        want = "axis 1 is dynamic"
    else:
        m, want = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=21), "opset 21"
    rep = lint_mod.lint(m, case)
    assert not rep.ok
    assert any(want in p for p in rep.problems), rep.problems


def test_forbidden_ops_are_still_known_to_the_parser_table():
    assert "Unique" not in lint_mod.TRT_SUPPORTED_OPS
    assert {"ScatterND", "Loop", "If", "Scan"} <= lint_mod.FORBIDDEN_OPS


def test_lint_passes_on_exported_graphs(bundle):
    man = read_manifest(bundle)
    for g in GRAPHS:
        rep = lint_mod.lint(onnx.load(str(bundle / f"{g}.onnx")), g)
        assert rep.ok, (g, rep.problems)
        assert rep.ops == man["graphs"][g]["trt_lint"]["ops"]
        assert not set(rep.ops) & lint_mod.FORBIDDEN_OPS
