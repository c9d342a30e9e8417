"""Graphs with their weights in ONNX external data (`--external-data-above MIB`), the manifest's record of
those files, the runtime's checks of them, the in-place fp16 conversion and the export's cost record."""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import onnx
import pytest
import torch

from discodiff.export.graphs import DenoiserGraph
from discodiff.export.onnx_export import mixed_fp16, weight_bytes
from discodiff.runtime.manifest import load_manifest
from tests.helpers import GRAPHS, MAX_BATCH, OPT_BATCH, call, copy_tree, export_cli, flip_byte, one_error_line, \
    read_manifest, run_cli, sha256, torch_threads, write_manifest

SHA = "0" * 64


def _export(tiny, out, *args) -> int:
    return export_cli("--checkpoint", tiny.run("shapes") / "model.safetensors", "--out", out,
                      "--max-batch", MAX_BATCH, "--opt-batch", OPT_BATCH, *args)


@pytest.fixture(scope="module")
def ext_bundle(tiny, tmp_path_factory):
    """shapes-tiny exported with every graph's weights in external data."""
    out = tmp_path_factory.mktemp("ext") / "bundle"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), torch_threads(1):
        assert _export(tiny, out, "--external-data-above", 0, "--quiet") == 0, err.getvalue()
    return out


def test_every_graph_has_one_data_file_listed_with_its_sha256(ext_bundle):
    raw = read_manifest(ext_bundle)
    assert sorted(raw["graphs"]) == sorted(GRAPHS)
    for name, entry in raw["graphs"].items():
        data = f"{name}.onnx.data"
        assert entry["file"] == f"{name}.onnx" and entry["external_data"] == {data: sha256(ext_bundle / data)}
        graph = onnx.load(str(ext_bundle / entry["file"]), load_external_data=False)
        external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {data}
    man = load_manifest(ext_bundle)   # verifies every file's hash, the data files included
    assert sorted(p.name for p in ext_bundle.iterdir()) == sorted(man.files())
    assert raw["export"]["external_data_above_mib"] == 0


def _samples(capsys, bundle, out, *args) -> dict:
    rc, _, err = call(capsys, run_cli, "--bundle", bundle, "--out", out, "--n", 3, "--batch", 3, "--steps", 4,
                      "--quiet", *args)
    assert rc == 0, err
    with np.load(out / "samples.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_run_samples_as_from_the_inline_bundle(ext_bundle, tiny, tmp_path, capsys, precision):
    ext = _samples(capsys, ext_bundle, tmp_path / "ext", "--precision", precision)
    inline = _samples(capsys, tiny.bundle("shapes"), tmp_path / "inline", "--precision", precision)
    np.testing.assert_allclose(ext["x"], inline["x"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ext["tokens"], inline["tokens"])
    np.testing.assert_array_equal(ext["labels"], inline["labels"])


@pytest.mark.parametrize("damage, word", [("flip", "sha256"), ("delete", "missing")])
def test_a_damaged_or_missing_data_file_is_refused(ext_bundle, tmp_path, capsys, damage, word):
    bundle = copy_tree(ext_bundle, tmp_path / "bundle")
    data = bundle / "denoiser.onnx.data"
    flip_byte(data) if damage == "flip" else data.unlink()
    rc, _, err = call(capsys, run_cli, "--bundle", bundle, "--out", tmp_path / "out", "--n", 1, "--quiet")
    one_error_line(rc, err, "discodiff-run", "denoiser.onnx.data", word)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [["denoiser.onnx.data"], {}, {"../denoiser.onnx.data": SHA},
                                 {"sub/denoiser.onnx.data": SHA}, {"denoiser.onnx.data": "0" * 63},
                                 {"denoiser.onnx.data": "Z" * 64}, {"denoiser.onnx.data": None}])
def test_a_malformed_external_data_entry_is_refused(ext_bundle, tmp_path, capsys, bad):
    bundle = copy_tree(ext_bundle, tmp_path / "bundle")
    raw = read_manifest(bundle)
    raw["graphs"]["denoiser"]["external_data"] = bad
    write_manifest(bundle, raw)
    rc, _, err = call(capsys, run_cli, "--bundle", bundle, "--out", tmp_path / "out", "--n", 1, "--quiet")
    one_error_line(rc, err, "discodiff-run", "malformed", "graphs.denoiser.external_data")


def test_a_normal_export_is_inline_byte_identical_and_records_its_costs(tiny, tmp_path, capsys):
    out = tmp_path / "bundle"          # toy8: the cheapest export that has every graph
    rc, _, err = call(capsys, export_cli, "--checkpoint", tiny.run("toy8") / "model.safetensors", "--out", out,
                      "--max-batch", MAX_BATCH, "--opt-batch", OPT_BATCH)
    assert rc == 0, err
    ref, raw = tiny.bundle("toy8"), read_manifest(out)
    assert not list(out.glob("*.data"))
    for name, entry in raw["graphs"].items():
        assert "external_data" not in entry
        assert sha256(out / entry["file"]) == sha256(ref / entry["file"]) == entry["sha256"], name
        assert f"exporting {name} ... (" in err
    cost = raw["export"]
    assert cost["seconds"] > 0 and cost["peak_rss_mb"] > 0 and cost["external_data_above_mib"] == 1536
    assert sorted(cost["per_graph_s"]) == sorted(GRAPHS) and all(s > 0 for s in cost["per_graph_s"].values())
    assert cost["seconds"] >= sum(cost["per_graph_s"].values())
    budget = raw["parity"]["budget"]
    assert budget["reduced"] is False and 0 < budget["denoiser_params"] <= budget["reduced_above_params"]
    assert raw["parity"]["sampler"]["seeds"] == budget["sampler_seeds"] == 4


def _tensors(module: torch.nn.Module) -> dict:
    return {k: (v.dtype, v.detach().numpy().tobytes()) for k, v in module.state_dict().items()}


def test_fp16_conversion_in_place_restores_the_model_bit_for_bit(tiny):
    wrapper = DenoiserGraph(copy.deepcopy(tiny.model("shapes").denoiser))
    before, params = _tensors(wrapper), {k: (id(p), p.data_ptr()) for k, p in wrapper.named_parameters()}
    fp32_bytes = weight_bytes(wrapper)
    with pytest.raises(RuntimeError, match="mid-export"):
        with mixed_fp16(wrapper) as fp16:
            assert fp16 is wrapper and weight_bytes(fp16) < fp32_bytes
            assert any(p.dtype == torch.float16 for p in fp16.parameters())
            raise RuntimeError("mid-export")   # restored on failure too
    assert _tensors(wrapper) == before
    assert {k: (id(p), p.data_ptr()) for k, p in wrapper.named_parameters()} == params   # the same tensors, no copies
    with mixed_fp16(wrapper):
        pass
    assert _tensors(wrapper) == before and weight_bytes(wrapper) == fp32_bytes
