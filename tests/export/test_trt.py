"""TensorRT: `discodiff-export --trt` engine builds and the runtime's TensorRT backend (CUDA graphs,
no torch). Needs the tensorrt package and an NVIDIA GPU; skipped elsewhere, with the reason."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from discodiff.errors import UserError
from discodiff.runtime.backends import trt as trt_backend
from discodiff.runtime.bundle import choose_backend
from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.draws import draw
from discodiff.runtime.manifest import load_manifest
from discodiff.runtime.sampling import prior_tokens, sample_batch
from tests.helpers import GRAPHS, MAX_BATCH, OPT_BATCH, call, copy_tree as copy_bundle, error_lines, export_cli, \
    flip_byte, hidden_leftovers, read_manifest, run_cli, sha256, torch_threads

TRT_OK, TRT_WHY = trt_backend.available()
pytestmark = [pytest.mark.trt, pytest.mark.gpu,
              pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and an NVIDIA GPU: {TRT_WHY}")]

ENGINE_TOL = {"fp32": 5e-3, "mixed-fp16": 2e-2}   # relative L2 vs ONNX Runtime


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module")
def trt_bundle(tiny, tmp_path_factory):
    """shapes-tiny exported with --trt: (bundle dir, exit code, stdout, stderr)."""
    ckpt = tiny.run("shapes") / "model.safetensors"
    out = tmp_path_factory.mktemp("trt") / "bundle"
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se), torch_threads(1):
        rc = export_cli("--checkpoint", ckpt, "--out", out, "--max-batch", MAX_BATCH, "--opt-batch", OPT_BATCH,
                        "--trt", "--quiet")
    assert rc == 0, se.getvalue()
    return out, rc, so.getvalue(), se.getvalue()


def random_feeds(man, graph: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The contract's random feeds (integer inputs over their declared values)."""
    return man.graph(graph).sample_feeds(rng, batch, man.meta.sigma_data)


def test_export_with_trt_adds_checked_engines(trt_bundle):
    import tensorrt

    out, rc, stdout, _ = trt_bundle
    man = load_manifest(out)       # verifies graphs and engines against their hashes
    assert sorted(man.engines) == sorted(GRAPHS)
    for name, e in man.engines.items():
        f = out / e["file"]
        assert f.is_file() and f.suffix == ".engine" and f.stat().st_size > 0
        assert e["sha256"] == sha256(f)
        assert e["source_graph"] == name
        assert e["precision"] == man.graphs[name].precision
        check = e["check_vs_onnxruntime"]
        assert check["batch"] == man.graphs[name].batch.opt
        assert max(check["rel_l2"].values()) <= ENGINE_TOL[e["precision"]]
    stamp = man.raw["tensorrt"]
    assert stamp["tensorrt"] == tensorrt.__version__
    assert {k: stamp[k] for k in ("gpu", "compute_capability")} == trt_backend.gpu_stamp()
    cache = man.raw["timing_cache"]
    assert cache and (out / cache["file"]).is_file() and sha256(out / cache["file"]) == cache["sha256"]
    assert "TensorRT" in stdout and "engines" in stdout
    assert hidden_leftovers(out.parent) == []


def test_trt_backend_matches_onnxruntime_per_graph(trt_bundle):
    from discodiff.runtime.backends.ort import OrtBackend

    out = trt_bundle[0]
    man = load_manifest(out)
    specs = man.graphs
    rng = np.random.default_rng(0)
    with trt_backend.TrtBackend(specs, {g: out / man.engines[g]["file"] for g in GRAPHS}, man.raw["tensorrt"]) as trt_be, \
            OrtBackend(specs, {g: out / specs[g].file for g in GRAPHS}) as ort_be:
        for g in GRAPHS:
            b = specs[g].batch
            for batch in sorted({b.min, 3, b.opt, b.max}):
                feeds = random_feeds(man, g, batch, rng)
                got, ref = trt_be.run(g, feeds), ort_be.run(g, feeds)
                assert sorted(got) == sorted(ref)
                for k, r in ref.items():
                    assert got[k].shape == r.shape and got[k].dtype == r.dtype, (g, k)
                    if r.dtype == np.int32:           # encoder arg-max: near-ties may flip
                        assert np.mean(got[k] == r) >= 0.9, (g, k, batch)
                    else:
                        assert rel_l2(got[k], r) <= ENGINE_TOL[specs[g].precision], (g, k, batch)


def test_trt_pipeline_matches_onnxruntime_samples(trt_bundle):
    out = trt_bundle[0]
    with Pipeline.open(out, backend="ort", precision="fp32") as ort_o:
        d = draw(np.arange(6), ort_o.model.meta)
        x_ref, tok_ref = sample_batch(ort_o.model, d, steps=8)
    for precision, tol in (("fp32", 2e-2), ("fp16", 5e-2)):
        with Pipeline.open(out, backend="trt", precision=precision) as o:
            assert o.backend.name == "trt"
            x, tok = sample_batch(o.model, d, steps=8, tokens=tok_ref)   # same tokens: compare the ODE alone
            assert np.isfinite(x).all()
            assert rel_l2(x, x_ref) <= tol, (precision, rel_l2(x, x_ref))
            tok_trt = prior_tokens(o.model, d)
            assert np.mean(tok_trt == tok_ref) >= 0.75


def test_cuda_graph_replay_is_deterministic_per_batch_size(trt_bundle):
    out = trt_bundle[0]
    with Pipeline.open(out, backend="trt", precision="fp16") as o:
        meta = o.model.meta
        for n in (1, 3, MAX_BATCH):
            d = draw(np.arange(n), meta)
            a = sample_batch(o.model, d, steps=4)
            b = sample_batch(o.model, d, steps=4)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        assert {1, 3, MAX_BATCH} <= set(o.backend.graphs["denoiser_fp16"].graphs)   # one captured graph per batch
        # a batch run after another size reuses the right graph: results are those of a fresh backend
        d = draw(np.arange(3), meta)
        again = sample_batch(o.model, d, steps=4)
    with Pipeline.open(out, backend="trt", precision="fp16") as fresh:
        np.testing.assert_array_equal(sample_batch(fresh.model, d, steps=4)[0], again[0])


def test_auto_backend_uses_trt_with_fp16(trt_bundle):
    out = trt_bundle[0]
    man = load_manifest(out)
    assert choose_backend(man, "auto") == "trt"
    with Pipeline.open(out) as o:
        assert o.backend.name == "trt" and o.denoiser == "denoiser_fp16"


def test_discodiff_run_with_trt(trt_bundle, tmp_path, capsys):
    out = tmp_path / "samples"
    rc, stdout, err = call(capsys, run_cli, "--bundle", trt_bundle[0], "--out", out, "--n", 5, "--batch", 4,
                           "--steps", 6, "--backend", "trt", "--quiet")
    assert rc == 0, err
    timing = json.loads((out / "timing.json").read_text())
    assert timing["backend"] == "trt" and timing["denoiser_graph"] == "denoiser_fp16" and timing["samples"] == 5
    assert sorted(p.name for p in out.glob("*.png") if p.stem.isdigit()) == [f"{s:06d}.png" for s in range(5)]
    with np.load(out / "samples.npz") as f:
        assert f["x"].shape == (5, 3, 8, 8) and np.isfinite(f["x"]).all()


def test_engine_built_for_another_gpu_is_refused(trt_bundle):
    out = trt_bundle[0]
    man = load_manifest(out)
    stamp = dict(man.raw["tensorrt"], gpu="Some Other GPU")
    with pytest.raises(UserError, match="rebuild"):
        trt_backend.TrtBackend({"denoiser": man.graphs["denoiser"]},
                               {"denoiser": out / man.engines["denoiser"]["file"]}, stamp)


def test_batch_outside_the_profile_is_refused(trt_bundle):
    out = trt_bundle[0]
    with Pipeline.open(out, backend="trt", precision="fp32") as o:
        feeds = random_feeds(o.manifest, "denoiser", 2 * MAX_BATCH + 1, np.random.default_rng(0))
        with pytest.raises(UserError, match="outside the exported range"):
            o.backend.run("denoiser", feeds)


def test_tampered_engine_is_detected(trt_bundle, tmp_path, capsys):
    b = copy_bundle(trt_bundle[0], tmp_path / "bundle")
    flip_byte(b / read_manifest(b)["engines"]["denoiser_fp16"]["file"])
    with pytest.raises(UserError, match="sha256"):
        load_manifest(b)
    rc, _, err = call(capsys, run_cli, "--bundle", b, "--out", tmp_path / "o", "--n", 2, "--batch", 2, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "sha256" in err
