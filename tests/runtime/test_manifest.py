"""Reading a bundle: the round trip, and every way a bundle can be damaged giving one clear error, both
from `load_manifest` / `Pipeline.open` and from `discodiff-run` (exit 2, one stderr line)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from discodiff.errors import UserError
from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.manifest import SCHEMA, load_manifest
from tests.helpers import GRAPHS, call, copy_tree as copy_bundle, error_lines, flip_byte, read_manifest, run_cli, \
    sha256, write_manifest


def run_args(bundle, out):
    return ("--bundle", bundle, "--n", 2, "--batch", 2, "--steps", 2, "--solver", "euler", "--out", out, "--quiet")


def expect_run_error(capsys, bundle, out, *words) -> str:
    rc, _, err = call(capsys, run_cli, *run_args(bundle, out))
    lines = error_lines(err)
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("discodiff-run: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not out.exists()
    return lines[0]


@pytest.fixture
def bundle(toy8_bundle, tmp_path):
    """A private copy of the toy8 bundle."""
    return copy_bundle(toy8_bundle, tmp_path / "bundle")


def test_round_trip(toy8_bundle, shapes_bundle):
    for b in (toy8_bundle, shapes_bundle):
        man = load_manifest(b)
        raw = json.loads((b / "manifest.json").read_text())
        assert man.raw == raw and {n: g.to_dict() for n, g in man.graphs.items()} == raw["graphs"]
        assert sorted(man.graphs) == sorted(GRAPHS)
        for spec in man.graphs.values():
            assert spec.sha256 == sha256(b / spec.file)
        assert man.files() == {"manifest.json", *(g.file for g in man.graphs.values())}
        assert man.sampling_batch_max == raw["graphs"]["denoiser"]["batch"]["max"] // 2


def test_untouched_copy_runs(bundle, tmp_path, capsys):
    rc, out, err = call(capsys, run_cli, *run_args(bundle, tmp_path / "out"))
    assert rc == 0, err
    assert (tmp_path / "out" / "samples.npz").is_file()


@pytest.mark.parametrize("graph", GRAPHS)
def test_flipped_byte_in_graph_file_is_detected(bundle, tmp_path, capsys, graph):
    man = read_manifest(bundle)
    assert sorted(man["graphs"]) == sorted(GRAPHS)      # the parametrisation covers every file named
    f = bundle / man["graphs"][graph]["file"]
    flip_byte(f)
    with pytest.raises(UserError, match="sha256") as exc:
        load_manifest(bundle)
    assert f.name in str(exc.value) and "\n" not in str(exc.value)
    expect_run_error(capsys, bundle, tmp_path / "out", "sha256", f.name)


@pytest.mark.parametrize("where", [0.0, 0.999])
def test_flipped_first_or_last_byte_is_detected(bundle, where):
    flip_byte(bundle / "denoiser.onnx", where)
    with pytest.raises(UserError, match="sha256"):
        load_manifest(bundle)


def test_engine_named_in_manifest_is_verified_too(bundle, tmp_path, capsys):
    eng = bundle / "denoiser.engine"
    eng.write_bytes(b"not an engine")
    man = read_manifest(bundle)
    man["engines"] = {"denoiser": {"file": eng.name, "sha256": sha256(eng), "source_graph": "denoiser",
                                   "precision": "fp32"}}
    write_manifest(bundle, man)
    load_manifest(bundle)                               # consistent so far
    flip_byte(eng)
    with pytest.raises(UserError, match="sha256"):
        load_manifest(bundle)
    eng.unlink()
    with pytest.raises(UserError, match="missing"):
        load_manifest(bundle)


def test_verify_false_skips_hashes(bundle):
    flip_byte(bundle / "encoder.onnx")
    assert load_manifest(bundle, verify=False).meta.m == 1


@pytest.mark.parametrize("graph", ["denoiser", "prior_step"])
def test_missing_graph_file(bundle, tmp_path, capsys, graph):
    (bundle / f"{graph}.onnx").unlink()
    with pytest.raises(UserError, match="missing"):
        load_manifest(bundle)
    expect_run_error(capsys, bundle, tmp_path / "out", "missing", f"{graph}.onnx")


@pytest.mark.parametrize("schema", [0, SCHEMA + 1, str(SCHEMA), None])   # older ones migrate: test_schema.py
def test_wrong_schema(bundle, tmp_path, capsys, schema):
    man = read_manifest(bundle)
    man["schema"] = schema
    write_manifest(bundle, man)
    with pytest.raises(UserError, match="schema"):
        load_manifest(bundle)
    expect_run_error(capsys, bundle, tmp_path / "out", "schema")


def test_wrong_format(bundle, tmp_path, capsys):
    man = read_manifest(bundle)
    man["format"] = "something-else"
    write_manifest(bundle, man)
    with pytest.raises(UserError, match="not a DisCo-Diff bundle manifest"):
        load_manifest(bundle)
    expect_run_error(capsys, bundle, tmp_path / "out", "not a DisCo-Diff bundle")


@pytest.mark.parametrize("text", ["", "{", '{"format": "discodiff-bundle",', "[1, 2]", "\xff\xfe garbage"])
def test_malformed_json(bundle, tmp_path, capsys, text):
    (bundle / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError):
        load_manifest(bundle)
    expect_run_error(capsys, bundle, tmp_path / "out", "manifest.json")


def test_missing_manifest_and_missing_bundle(bundle, tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        load_manifest(tmp_path / "nowhere")
    expect_run_error(capsys, tmp_path / "nowhere", tmp_path / "out", "does not exist")
    (bundle / "manifest.json").unlink()
    with pytest.raises(UserError, match="not a bundle"):
        load_manifest(bundle)
    expect_run_error(capsys, bundle, tmp_path / "out", "manifest.json")


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(data_shape=[3]), "data_shape"),
    (lambda m: m.update(data_shape=[2, 1]), "data_shape"),
    (lambda m: m.update(m=2), "m=2"),
    (lambda m: m.update(k=5), "k=5"),
    (lambda m: m.update(num_classes=3), "class_labels"),
    (lambda m: m["graphs"].pop("prior_step"), "prior_step"),
    (lambda m: m["graphs"].pop("denoiser"), "denoiser"),
    (lambda m: m.pop("data_shape"), "malformed"),
], ids=["data_shape", "data_shape_rank", "m", "k", "classes", "no_prior_step", "no_denoiser", "no_data_shape"])
def test_shapes_not_matching_model(bundle, tmp_path, capsys, edit, words):
    man = read_manifest(bundle)
    edit(man)
    write_manifest(bundle, man)
    with pytest.raises(UserError, match="malformed") as exc:
        load_manifest(bundle)
    assert words in str(exc.value)
    expect_run_error(capsys, bundle, tmp_path / "out", words)


def test_graph_contract_disagreeing_with_data_shape_on_shapes(shapes_bundle, tmp_path):
    b = copy_bundle(shapes_bundle, tmp_path / "bundle")
    man = read_manifest(b)
    man["data_shape"] = [3, 16, 16]
    write_manifest(b, man)
    with pytest.raises(UserError, match="do not match data_shape"):
        load_manifest(b)


@pytest.mark.parametrize("edit", [
    lambda m: m["graphs"]["encoder"].pop("sha256"),
    lambda m: m["graphs"]["denoiser"].pop("file"),
    lambda m: m.pop("edm"),
    lambda m: m.pop("sampling"),
], ids=["graph_without_sha256", "graph_without_file", "no_edm", "no_sampling"])
def test_manifest_missing_required_key_gives_one_line(bundle, tmp_path, capsys, edit):
    """A manifest missing a key the runtime reads is malformed: one error line, exit 2, no traceback."""
    man = read_manifest(bundle)
    edit(man)
    write_manifest(bundle, man)
    expect_run_error(capsys, bundle, tmp_path / "out")


def test_graph_file_damaged_but_rehashed_gives_one_line(bundle, tmp_path, capsys):
    """A file that matches its (re-written) hash but is not ONNX: refused in one line when the manifest
    reads the graph's external-data references (before ONNX Runtime sees it)."""
    f = bundle / "denoiser.onnx"
    f.write_bytes(b"this is not an onnx model")
    man = read_manifest(bundle)
    man["graphs"]["denoiser"]["sha256"] = sha256(f)
    write_manifest(bundle, man)
    with pytest.raises(UserError, match="not a readable ONNX graph"):
        load_manifest(bundle)
    expect_run_error(capsys, bundle, tmp_path / "out", "not a readable ONNX graph")


def test_pipeline_loads_only_what_sampling_needs(toy8_bundle, shapes_bundle):
    with Pipeline.open(toy8_bundle, backend="ort", precision="fp32") as o:
        assert sorted(o.backend.specs) == ["denoiser", "prior_step"] and o.denoiser == "denoiser"
    assert o.backend.closed
    with Pipeline.open(shapes_bundle, backend="ort", precision="fp16", prior="recompute") as o:
        assert sorted(o.backend.specs) == ["denoiser_fp16", "prior_recompute"] and o.denoiser == "denoiser_fp16"
        assert o.backend.name == "ort"
        with pytest.raises(UserError, match="batch 9 is outside"):
            o.backend.run("prior_recompute", {"tokens": np.zeros((9, 2), np.int32)})


# ---------------------------------------------------------------------------------------------
# A manifest edited and re-hashed: checked as a schema, and against the graph files


def _swap_graphs(m):
    a, b = m["graphs"]["denoiser"], m["graphs"]["prior_step"]
    a["file"], b["file"], a["sha256"], b["sha256"] = b["file"], a["file"], b["sha256"], a["sha256"]


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["graphs"]["denoiser"]["batch"].pop("max"), "batch"),
    (lambda m: m.update(m="1"), "m: must be an integer"),
    (lambda m: m.update(num_classes=2), "class_labels"),
    (lambda m: m["sampling"].update(solver="rk4"), "rk4"),
    (lambda m: m["sampling"].update(steps=0), "sampling.steps"),
    (lambda m: m["edm"].update(sigma_min="0.002"), "sigma_min"),
    (lambda m: m["graphs"]["denoiser"]["inputs"][0].update(dtype="float64"), "dtype"),
    (lambda m: m["graphs"]["denoiser"].update(file="../denoiser.onnx"), "plain file name"),
    (lambda m: m.update(class_names=["a", "b"]), "class_names"),
    (lambda m: m["sampling"].update(fitted={"8": {"solver": "euler", "nfe": 8, "sigmas": [80.0, 1.0, 2.0, 0.0]}}),
     "decrease"),
], ids=["batch_max_missing", "m_as_string", "num_classes_changed", "solver_rk4", "steps_0", "sigma_as_string",
        "dtype_float64", "file_outside_bundle", "class_names", "fitted_not_decreasing"])
def test_edited_manifest_gives_one_line(bundle, tmp_path, capsys, edit, words):
    man = read_manifest(bundle)
    edit(man)
    write_manifest(bundle, man)
    with pytest.raises(UserError) as exc:
        load_manifest(bundle)
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    expect_run_error(capsys, bundle, tmp_path / "out", words)


def test_two_graphs_swapped_with_their_hashes_is_refused(bundle, tmp_path, capsys):
    """The manifest is consistent with itself and the hashes match, but the files hold other graphs: the
    backend compares each file's own inputs with its contract."""
    man = read_manifest(bundle)
    _swap_graphs(man)
    write_manifest(bundle, man)
    load_manifest(bundle)   # hashes and schema hold
    with pytest.raises(UserError, match="does not hold the denoiser graph"):
        Pipeline.open(bundle, backend="ort")
    expect_run_error(capsys, bundle, tmp_path / "out", "does not hold the denoiser graph")
