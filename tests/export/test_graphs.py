"""The exported graphs against PyTorch, re-checked here with fresh inputs straight through onnxruntime
sessions (not through the runtime's backend), the fp16 graph's structure, the manifest's content and
the ONNX checker."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from discodiff import __version__
from discodiff.export import parity
from discodiff.runtime.contract import SIGMA_MAX, SIGMA_MIN
from discodiff.runtime.manifest import SCHEMA, load_manifest
from tests.helpers import GRAPHS, MAX_BATCH, OPT_BATCH, read_manifest, sha256

MODELS = ("toy8", "shapes")


@pytest.fixture(params=MODELS)
def which(request, tiny):
    """(name, bundle dir, torch model) for each tiny model."""
    name = request.param
    return name, tiny.bundle(name), tiny.model(name)


def session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def maxabs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def denoiser_feeds(bundle, model, batch, rng, sigmas=None):
    """The contract's random feeds (tokens include the null code k, labels 0..C-1, x at the noisy scale)."""
    feeds = load_manifest(bundle).graph("denoiser").sample_feeds(rng, batch, model.cfg.sigma_data, sigmas)
    if model.cfg.m:
        assert feeds["tokens"].max() <= model.cfg.k and feeds["tokens"].min() >= 0
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
        feeds = denoiser_feeds(bundle, model, b, rng)
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
    for s in np.geomspace(SIGMA_MIN, SIGMA_MAX, 9):
        feeds = denoiser_feeds(bundle, model, 3, rng, sigmas=np.full(3, s))
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


def test_manifest_content(which, tiny):
    name, bundle, model = which
    man = read_manifest(bundle)
    cfg = model.cfg
    ckpt = tiny.run(name) / "model.safetensors"
    assert man["format"] == "discodiff-bundle" and man["schema"] == SCHEMA
    assert man["toolkit_version"] == __version__
    assert man["source"]["sha256"] == sha256(ckpt)
    assert pathlib.Path(man["source"]["checkpoint"]).resolve() == ckpt.resolve()
    assert man["data_shape"] == list(cfg.data_shape)
    assert (man["m"], man["k"], man["num_classes"]) == (cfg.m, cfg.k, cfg.num_classes)
    if name == "shapes":
        assert man["class_names"] == ["circle", "square", "triangle"]
    assert man["edm"]["sigma_data"] == cfg.sigma_data
    assert man["sampling"] == {"solver": "heun", "steps": 18, "schedule": "edm", "fitted": {}}
    assert man["edm"] == {"sigma_data": cfg.sigma_data, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": 7.0}
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
    values = {t["name"]: t.get("values") for t in den["inputs"]}
    assert values["tokens"] == [0, cfg.k] and values["x"] is None   # k = the null code
    if cfg.num_classes:
        assert values["class_labels"] == [0, cfg.num_classes - 1]
    p = man["parity"]
    assert p["denoiser"]["max_abs"] <= 1e-4 and p["encoder"]["max_abs"] <= 1e-4
    assert max(p["prior"]["kv_vs_recompute"], p["prior"]["kv_vs_torch"], p["prior"]["recompute_vs_torch"],
               p["prior"]["torch_kv_vs_torch"]) <= 1e-5
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


def test_manifest_round_trips_through_the_runtime_types(which):
    name, bundle, _ = which
    raw = json.loads((bundle / "manifest.json").read_text())
    man = load_manifest(bundle)
    assert man.raw == raw and {n: g.to_dict() for n, g in man.graphs.items()} == raw["graphs"]
