"""discodiff-export: the exported graphs against PyTorch (re-checked here with fresh inputs, straight
through onnxruntime sessions), the manifest, the ONNX checker, the TensorRT lint, and what the command
leaves on disk when it fails, replaces or is refused."""
from __future__ import annotations

import contextlib
import io
import json
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export_fixtures import *  # noqa: F401,F403
from export_fixtures import GRAPHS, MAX_BATCH, OPT_BATCH, call, copy_bundle, error_lines, export_cli, get_bundle, \
    get_model, get_run, read_manifest, sha256, torch_threads, tree_state

from discodiff import __version__
from discodiff.export import lint as lint_mod
from discodiff.export import parity
from discodiff.runtime.backends import trt as trt_backend
from discodiff.runtime.manifest import load_manifest

MODELS = ("toy8", "shapes")


@pytest.fixture(params=MODELS)
def which(request, tmp_path_factory):
    """(name, bundle dir, torch model) for each tiny model."""
    name = request.param
    return name, get_bundle(name, tmp_path_factory), get_model(name, tmp_path_factory)


def session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def maxabs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def denoiser_feeds(cfg, sigmas, rng):
    b = len(sigmas)
    scale = np.sqrt(np.asarray(sigmas) ** 2 + cfg.sigma_data ** 2).reshape((-1,) + (1,) * len(cfg.data_shape))
    feeds = {"x": (rng.standard_normal((b, *cfg.data_shape)) * scale).astype(np.float32),
             "sigma": np.asarray(sigmas, np.float32)}
    if cfg.m:
        feeds["tokens"] = rng.integers(0, cfg.k + 1, size=(b, cfg.m)).astype(np.int32)   # k = the null code
    if cfg.num_classes:
        feeds["class_labels"] = rng.integers(0, cfg.num_classes, size=b).astype(np.int32)
    return feeds


@torch.no_grad()
def torch_denoise(model, feeds):
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    return model.denoiser(t["x"], t["sigma"], tokens=t.get("tokens"), class_labels=t.get("class_labels")).numpy()


# ------------------------------------------------------------------------------------------------ parity


def test_denoiser_fp32_matches_torch(which):
    name, bundle, model = which
    sess = session(bundle / "denoiser.onnx")
    rng = np.random.default_rng(1234)
    for b in (1, 3, 2 * MAX_BATCH):   # 2 * max: the guided batch
        sig = np.exp(rng.uniform(np.log(0.002), np.log(80.0), size=b))
        feeds = denoiser_feeds(model.cfg, sig, rng)
        out = sess.run(["denoised"], feeds)[0]
        ref = torch_denoise(model, feeds)
        assert out.shape == ref.shape == (b, *model.cfg.data_shape)
        assert out.dtype == np.float32
        assert maxabs(out, ref) <= 1e-4, (name, b)


@torch.no_grad()
def test_encoder_matches_torch(which):
    name, bundle, model = which
    sess = session(bundle / "encoder.onnx")
    rng = np.random.default_rng(99)
    cfg = model.cfg
    for b in (1, 3, MAX_BATCH):
        x = (rng.standard_normal((b, *cfg.data_shape)) * cfg.sigma_data).astype(np.float32)
        logits, tokens = sess.run(["logits", "tokens"], {"x": x})
        ref = model.encoder(torch.from_numpy(x)).numpy()
        assert logits.shape == ref.shape == (b, cfg.m, cfg.k)
        assert maxabs(logits, ref) <= 1e-4
        assert tokens.dtype == np.int32
        np.testing.assert_array_equal(tokens, logits.argmax(-1))
        np.testing.assert_array_equal(tokens, ref.argmax(-1))


@torch.no_grad()
def test_prior_kv_cache_equals_recompute_equals_torch(which):
    name, bundle, model = which
    cfg, prior = model.cfg, model.prior
    step, recompute = session(bundle / "prior_step.onnx"), session(bundle / "prior_recompute.onnx")
    cache_shape = next(i.shape for i in step.get_inputs() if i.name == "k_cache")   # [L, "B", H, T, Dh]
    assert cache_shape[1] == "B" and cache_shape[3] == cfg.m
    rng = np.random.default_rng(7)
    for b in (1, 3, MAX_BATCH):
        seq = np.concatenate([rng.integers(0, cfg.num_classes + 1, size=(b, 1)),      # label (or null)
                              rng.integers(0, cfg.k, size=(b, cfg.m - 1))], axis=1).astype(np.int32)
        ref = prior(torch.from_numpy(seq)).numpy()                                    # [B, m, k]
        full = recompute.run(["logits"], {"tokens": seq})[0]
        shape = list(cache_shape)
        shape[1] = b
        kc, vc = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for pos in range(cfg.m):
            logits, kc, vc = step.run(["logits", "k_cache_out", "v_cache_out"],
                                      {"token": seq[:, pos], "pos": np.array([pos], np.int32),
                                       "k_cache": kc, "v_cache": vc})
            assert logits.shape == (b, cfg.k)
            assert maxabs(logits, full[:, pos]) <= 1e-5, (name, b, pos, "kv vs recompute")
            assert maxabs(logits, ref[:, pos]) <= 1e-5, (name, b, pos, "kv vs torch")
            assert maxabs(full[:, pos], ref[:, pos]) <= 1e-5, (name, b, pos, "recompute vs torch")
            # the cache really carries state: position pos is written, later slots are not yet
            assert np.any(kc[:, :, :, pos] != 0)
            if pos + 1 < cfg.m:
                assert not np.any(kc[:, :, :, pos + 1:])


def test_fp16_denoiser_error_bounded_across_sigmas(which):
    name, bundle, model = which
    sess = session(bundle / "denoiser_fp16.onnx")
    rng = np.random.default_rng(5)
    worst = 0.0
    for s in np.geomspace(0.002, 80.0, 9):
        feeds = denoiser_feeds(model.cfg, np.full(3, s), rng)
        out = sess.run(["denoised"], feeds)[0]
        assert out.dtype == np.float32
        ref = torch_denoise(model, feeds)
        err = rel_l2(out, ref)
        assert np.isfinite(err) and err <= 1e-2, (name, s, err)
        worst = max(worst, err)
    assert worst > 0, "the fp16 graph gives bit-identical results to float32: it is not running in fp16"


def _types(model: onnx.ModelProto) -> dict[str, int]:
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_fp16_graph_structure(which):
    name, bundle, _ = which
    model = onnx.load(str(bundle / "denoiser_fp16.onnx"))
    g = model.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    io = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.output)}
    assert io["x"] == f32 and io["sigma"] == f32 and io["denoised"] == f32
    assert all(t in (f32, TensorProto.INT32) for t in io.values()), io
    ops = [n.op_type for n in g.node]
    assert "Cast" in ops
    assert any(t.data_type == f16 for t in g.initializer), "no fp16 weights"
    types = _types(model)
    trunk = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert trunk and any(types.get(n.output[0]) == f16 for n in trunk), "no matmul / conv runs in fp16"
    islands = [n for n in g.node if n.op_type in ("Softmax", "InstanceNormalization", "LayerNormalization")]
    assert islands
    for n in islands:
        assert types.get(n.input[0]) == f32 and types.get(n.output[0]) == f32, (n.op_type, n.name)
    if name == "shapes":  # U-Net with attention: both kinds of float32 islands are present
        assert "Softmax" in ops and "InstanceNormalization" in ops
    # the fp32 graph has no fp16 anywhere
    full = onnx.load(str(bundle / "denoiser.onnx"))
    assert not any(t.data_type == f16 for t in full.graph.initializer)
    assert f16 not in _types(full).values()


# ------------------------------------------------------------------------------------------------ manifest


def _dims(vi) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in vi.type.tensor_type.shape.dim]


def test_manifest_content(which, tmp_path_factory):
    name, bundle, model = which
    man = read_manifest(bundle)
    cfg = model.cfg
    ckpt = get_run(name, tmp_path_factory) / "model.safetensors"
    assert man["format"] == "discodiff-bundle" and man["schema"] == 1
    assert man["toolkit_version"] == __version__
    assert man["source"]["sha256"] == sha256(ckpt)
    assert pathlib.Path(man["source"]["checkpoint"]).resolve() == ckpt.resolve()
    assert man["data_shape"] == list(cfg.data_shape)
    assert (man["m"], man["k"], man["num_classes"]) == (cfg.m, cfg.k, cfg.num_classes)
    if name == "shapes":
        assert man["class_names"] == ["circle", "square", "triangle"]
    assert man["edm"]["sigma_data"] == cfg.sigma_data
    assert man["sampling"] == {"solver": "heun", "steps": 18}
    assert man["engines"] == {}
    assert man["trt_lint"]["ok"] is True
    assert sorted(man["graphs"]) == sorted(GRAPHS)
    assert sorted(p.name for p in bundle.iterdir()) == sorted([f"{g}.onnx" for g in GRAPHS] + ["manifest.json"])
    for g, entry in man["graphs"].items():
        f = bundle / entry["file"]
        assert entry["file"] == f"{g}.onnx" and f.is_file()
        assert entry["sha256"] == sha256(f)
        assert entry["opset"] >= 17
        proto = onnx.load(str(f))
        assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == entry["opset"]
        assert entry["nodes"] == len(proto.graph.node)
        assert entry["trt_lint"]["ok"] is True and entry["trt_lint"]["problems"] == []
        want_max = 2 * MAX_BATCH if g.startswith("denoiser") else MAX_BATCH
        assert entry["batch"] == {"min": 1, "opt": OPT_BATCH, "max": want_max}
        assert entry["precision"] == ("mixed-fp16" if g == "denoiser_fp16" else "fp32")
        # I/O in the file = I/O in the manifest; the batch axis "B" is the only symbolic axis
        for kind, vis in (("inputs", proto.graph.input), ("outputs", proto.graph.output)):
            assert [t["name"] for t in entry[kind]] == [vi.name for vi in vis]
            for t, vi in zip(entry[kind], vis):
                assert onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type) == np.dtype(t["dtype"])
                assert t["dtype"] in ("float32", "int32")
                assert _dims(vi) == t["shape"], (g, t["name"])
                assert t["shape"].count("B") == (0 if t["name"] == "pos" else 1)
                assert all(d == "B" or (isinstance(d, int) and d > 0) for d in t["shape"])
    den = man["graphs"]["denoiser"]
    assert [t["shape"] for t in den["inputs"] if t["name"] == "x"] == [["B", *cfg.data_shape]]
    p = man["parity"]
    assert p["denoiser"]["max_abs"] <= 1e-4 and p["encoder"]["max_abs"] <= 1e-4
    assert max(p["prior"]["kv_vs_recompute"], p["prior"]["kv_vs_torch"], p["prior"]["recompute_vs_torch"]) <= 1e-5
    assert p["prior"]["positions"] == cfg.m
    assert len(p["denoiser_fp16"]["per_sigma"]) == len(parity.PARITY_SIGMAS)
    assert p["sampler"]["denoiser"]["max_abs"] <= 1e-4 and p["sampler"]["denoiser"]["token_agreement"] == 1.0
    assert "rel_l2" in p["sampler"]["denoiser_fp16"]
    assert man["graphs"]["denoiser_fp16"]["fp16"]["fp16_weights"] > 0


def test_onnx_checker_passes(which):
    name, bundle, _ = which
    for g in GRAPHS:
        model = onnx.load(str(bundle / f"{g}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        assert not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


# ------------------------------------------------------------------------------------------------ lint


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


def test_lint_passes_on_exported_graphs(which):
    name, bundle, _ = which
    man = read_manifest(bundle)
    for g in GRAPHS:
        rep = lint_mod.lint(onnx.load(str(bundle / f"{g}.onnx")), g)
        assert rep.ok, (g, rep.problems)
        assert rep.ops == man["graphs"][g]["trt_lint"]["ops"]
        assert not set(rep.ops) & lint_mod.FORBIDDEN_OPS


# ------------------------------------------------------------------------------------------------ export CLI


def _leftovers(parent: pathlib.Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_parity_mismatch_exits_nonzero_and_leaves_no_bundle(toy8_train_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(parity, "FP32_TOL", -1.0)   # every fp32 comparison now "fails"
    out = tmp_path / "dest" / "bundle"
    out.parent.mkdir()
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_train_dir / "model.safetensors", "--out", out,
                      "--max-batch", 4, "--opt-batch", 2, "--quiet")
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("discodiff-export: error:") and "PyTorch" in lines[0], err
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
    assert _leftovers(out.parent) == []


@pytest.fixture(scope="module")
def reexport(tmp_path_factory):
    """Re-export toy8 with --trt over a copy of its bundle, using other batch sizes:
    (old manifest, new bundle, exit code, stderr)."""
    old = get_bundle("toy8", tmp_path_factory)
    dest = copy_bundle(old, tmp_path_factory.mktemp("reexport") / "bundle")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), torch_threads(1):
        rc = export_cli("--checkpoint", get_run("toy8", tmp_path_factory) / "model.safetensors", "--out", dest,
                        "--max-batch", 4, "--opt-batch", 2, "--trt", "--quiet")
    return read_manifest(old), dest, rc, err.getvalue()


def test_reexport_replaces_existing_bundle(reexport):
    old_man, dest, rc, err = reexport
    man = load_manifest(dest)
    assert man["graphs"]["denoiser"]["batch"] == {"min": 1, "opt": 2, "max": 8}
    assert man["graphs"]["encoder"]["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert old_man["graphs"]["denoiser"]["batch"]["max"] == 2 * MAX_BATCH
    for g, entry in man["graphs"].items():
        assert sha256(dest / entry["file"]) == entry["sha256"]
    assert _leftovers(dest.parent) == []


@pytest.mark.skipif(trt_backend.available()[0], reason="TensorRT and a GPU are present: tests/test_trt.py covers --trt")
def test_trt_flag_without_tensorrt_fails_cleanly_and_keeps_onnx_bundle(reexport):
    _, dest, rc, err = reexport
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("discodiff-export: error:") and "TensorRT" in lines[0]
    man = load_manifest(dest)   # verifies every file's hash
    assert man["engines"] == {}
    assert sorted(man["graphs"]) == sorted(GRAPHS)
    assert not list(dest.glob("*.engine"))


def test_refuses_existing_non_bundle_directory(toy8_train_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = tree_state(tmp_path)
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_train_dir / "model.safetensors", "--out", out, "--quiet")
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "not a bundle" in lines[0], err
    assert tree_state(tmp_path) == before


def test_refuses_existing_file_as_out(toy8_train_dir, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_train_dir / "model.safetensors", "--out", out, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1
    assert out.read_text() == "x"


def test_opt_batch_above_max_batch_is_refused(toy8_train_dir, tmp_path, capsys):
    out = tmp_path / "b"
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_train_dir / "model.safetensors", "--out", out,
                      "--max-batch", 4, "--opt-batch", 8, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "--opt-batch" in err
    assert not out.exists()


def test_manifest_is_valid_json_written_last(which):
    name, bundle, _ = which
    man = json.loads((bundle / "manifest.json").read_text())
    assert load_manifest(bundle) == man


def test_refuses_a_folder_with_someone_elses_manifest(toy8_train_dir, tmp_path, capsys):
    """A web app's folder: its own manifest.json, index.html and assets/. It must survive untouched."""
    out = tmp_path / "webapp"
    (out / "assets").mkdir(parents=True)
    (out / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (out / "index.html").write_text("<html></html>")
    (out / "assets" / "app.js").write_text("console.log(1)")
    before = tree_state(tmp_path)
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_train_dir / "model.safetensors", "--out", out, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "not a bundle" in err, err
    assert tree_state(tmp_path) == before


def test_refuses_a_bundle_holding_files_it_did_not_write(reexport, toy8_train_dir, tmp_path, capsys):
    dest = tmp_path / "bundle"
    shutil.copytree(reexport[1], dest)
    (dest / "my_notes.txt").write_text("keep me")
    before = tree_state(dest)
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_train_dir / "model.safetensors", "--out", dest, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "my_notes.txt" in err, err
    assert tree_state(dest) == before
