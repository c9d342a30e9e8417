"""discodiff-export as a command: what it leaves on disk when it fails, replaces a bundle or is refused."""
from __future__ import annotations

import contextlib
import io
import shutil

import pytest

from discodiff.export import parity
from discodiff.runtime.backends import trt as trt_backend
from discodiff.runtime.manifest import load_manifest
from tests.helpers import GRAPHS, MAX_BATCH, call, copy_tree as copy_bundle, error_lines, export_cli, \
    hidden_leftovers, read_manifest, sha256, torch_threads, tree_state


def test_parity_mismatch_exits_nonzero_and_leaves_no_bundle(toy8_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(parity, "FP32_TOL", -1.0)   # every fp32 comparison now "fails"
    out = tmp_path / "dest" / "bundle"
    out.parent.mkdir()
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out,
                      "--max-batch", 4, "--opt-batch", 2, "--quiet")
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("discodiff-export: error:") and "PyTorch" in lines[0], err
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


@pytest.fixture(scope="module")
def reexport(tiny, tmp_path_factory):
    """Re-export toy8 with --trt over a copy of its bundle, using other batch sizes:
    (old manifest, new bundle, exit code, stderr)."""
    old = tiny.bundle("toy8")
    dest = copy_bundle(old, tmp_path_factory.mktemp("reexport") / "bundle")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), torch_threads(1):
        rc = export_cli("--checkpoint", tiny.run("toy8") / "model.safetensors", "--out", dest,
                        "--max-batch", 4, "--opt-batch", 2, "--trt", "--quiet")
    return read_manifest(old), dest, rc, err.getvalue()


def test_reexport_replaces_existing_bundle(reexport):
    old_man, dest, rc, err = reexport
    man = read_manifest(dest)
    assert man["graphs"]["denoiser"]["batch"] == {"min": 1, "opt": 2, "max": 8}
    assert man["graphs"]["encoder"]["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert old_man["graphs"]["denoiser"]["batch"]["max"] == 2 * MAX_BATCH
    for g, entry in man["graphs"].items():
        assert sha256(dest / entry["file"]) == entry["sha256"]
    assert hidden_leftovers(dest.parent) == []


@pytest.mark.skipif(trt_backend.available()[0], reason="TensorRT and a GPU are present: tests/export/test_trt.py covers --trt")
def test_trt_flag_without_tensorrt_fails_cleanly_and_keeps_onnx_bundle(reexport):
    _, dest, rc, err = reexport
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("discodiff-export: error:") and "TensorRT" in lines[0]
    man = load_manifest(dest)   # verifies every file's hash
    assert man.engines == {}
    assert sorted(man.graphs) == sorted(GRAPHS)
    assert not list(dest.glob("*.engine"))


def test_refuses_existing_non_bundle_directory(toy8_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = tree_state(tmp_path)
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out, "--quiet")
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "not a bundle" in lines[0], err
    assert tree_state(tmp_path) == before


def test_refuses_existing_file_as_out(toy8_run, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1
    assert out.read_text() == "x"


def test_opt_batch_above_max_batch_is_refused(toy8_run, tmp_path, capsys):
    out = tmp_path / "b"
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out,
                      "--max-batch", 4, "--opt-batch", 8, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "--opt-batch" in err
    assert not out.exists()


def test_refuses_a_folder_with_someone_elses_manifest(toy8_run, tmp_path, capsys):
    """A web app's folder: its own manifest.json, index.html and assets/. It must survive untouched."""
    out = tmp_path / "webapp"
    (out / "assets").mkdir(parents=True)
    (out / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (out / "index.html").write_text("<html></html>")
    (out / "assets" / "app.js").write_text("console.log(1)")
    before = tree_state(tmp_path)
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "not a bundle" in err, err
    assert tree_state(tmp_path) == before


def test_refuses_a_bundle_holding_files_it_did_not_write(reexport, toy8_run, tmp_path, capsys):
    dest = tmp_path / "bundle"
    shutil.copytree(reexport[1], dest)
    (dest / "my_notes.txt").write_text("keep me")
    before = tree_state(dest)
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", dest, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "my_notes.txt" in err, err
    assert tree_state(dest) == before


def test_export_with_fit_nfe_writes_the_fits_into_the_new_bundle(toy8_run, tmp_path, capsys):
    out = tmp_path / "bundle"
    rc, stdout, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out,
                           "--max-batch", 8, "--fit-nfe", "5", "--fit-solver", "euler", "--quiet")
    assert rc == 0, err
    man = load_manifest(out)
    f = man.sampling["fitted"]["5"]
    assert f["solver"] == "euler" and len(f["sigmas"]) == 6 and f["heldout_rmse"] < f["heldout_rmse_edm"]
    assert "fitted schedule, 5 calls" in stdout
    assert hidden_leftovers(tmp_path) == []
