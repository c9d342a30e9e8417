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
    export_refused(capsys, toy8_run, dest, tmp_path, "my_notes.txt")


def export_refused(capsys, run, dest, root, word: str) -> None:
    """Exporting `run` to `dest` fails with one line naming `word` and changes nothing under `root`."""
    before = tree_state(root)
    rc, _, err = call(capsys, export_cli, "--checkpoint", run / "model.safetensors", "--out", dest, "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and word in err and "Traceback" not in err, err
    assert tree_state(root) == before


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


# ---------------------------------------------------------------------------------------------
# Leftovers of killed writers; concurrent writers of one bundle


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_killed_manifest_rewrites_temp_file_is_reclaimed(tiny, toy8_run, tmp_path, capsys):
    b = copy_bundle(tiny.bundle("toy8"), tmp_path / "bundle")
    stale = b / f".manifest.{_dead_pid()}.k1ll3d.json.tmp"
    stale.write_text('{"half": ')
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", b,
                      "--max-batch", MAX_BATCH, "--quiet")
    assert rc == 0, err
    assert not stale.exists() and hidden_leftovers(tmp_path) == []
    load_manifest(b)


def test_a_running_writers_temp_file_still_refuses(tiny, toy8_run, tmp_path, capsys):
    b = copy_bundle(tiny.bundle("toy8"), tmp_path / "bundle")
    (b / ".manifest.1.l1ve.json.tmp").write_text("{}")          # pid 1 always runs
    export_refused(capsys, toy8_run, b, tmp_path, ".manifest.1.l1ve.json.tmp")


def test_deeply_nested_json_as_the_destinations_manifest(toy8_run, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "manifest.json").write_text("[" * 200_000)
    export_refused(capsys, toy8_run, out, tmp_path, "manifest.json")


def test_an_export_waits_for_the_bundles_lock_and_names_its_holder(tiny, toy8_run, tmp_path, capsys, monkeypatch):
    """A fit rewriting the manifest holds the bundle's lock; an export does not replace the bundle under
    it (here the holder never lets go: the export is refused after its wait, leaving no temp folder)."""
    from discodiff.export import bundle as bundle_mod
    from tests.discodiff.test_locks import held_by_another_process

    monkeypatch.setattr(bundle_mod, "BUNDLE_WAIT_S", 0.5)
    b = copy_bundle(tiny.bundle("toy8"), tmp_path / "bundle")
    before = tree_state(b)
    with held_by_another_process(b, "discodiff-fit") as p:
        rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", b,
                          "--max-batch", MAX_BATCH, "--quiet")
        assert rc == 2 and len(error_lines(err)) == 1 and f"discodiff-fit (pid {p.pid})" in err, err
        assert sorted(x.name for x in tmp_path.iterdir()) == ["bundle"]   # no .bundle.tmp-* left beside
    assert {k: v for k, v in tree_state(b).items() if k != ".discodiff.lock"} == before


def test_a_fit_does_not_write_into_a_bundle_re_exported_while_it_fitted(tiny, reexport, tmp_path, capsys, monkeypatch):
    """While discodiff-fit computes, an export replaces the bundle with other graphs: the fit's manifest
    (old graphs + fits) must not land on the new bundle."""
    from discodiff.export import bundle as bundle_mod
    from discodiff.runtime.fit import cli as fit_mod
    from tests.runtime.test_fit_cli import fit_cli

    b = copy_bundle(tiny.bundle("toy8"), tmp_path / "bundle")
    real = fit_mod.fit_bundle

    def fit_then_reexport(*args, **kwargs):
        fitted = real(*args, **kwargs)
        bundle_mod._replace_locked(copy_bundle(reexport[1], tmp_path / ".new"), b)   # the export's own swap
        return fitted

    monkeypatch.setattr(fit_mod, "fit_bundle", fit_then_reexport)
    rc, _, err = call(capsys, fit_cli, "--bundle", b, "--nfe", "5", "--solver", "euler", "--quiet")
    assert rc == 2 and len(error_lines(err)) == 1 and "re-exported" in err, err
    assert tree_state(b) == tree_state(reexport[1])
    assert load_manifest(b).sampling["fitted"] == {}
