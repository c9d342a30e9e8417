"""discodiff-fit on a real (tiny) bundle: schedules fitted to its graphs land in its manifest, checked and
atomic, beating EDM rho=7 on held-out seeds; discodiff-run --nfe then samples with them, as the core
does; bad requests get one line and leave the bundle as it was."""
from __future__ import annotations

import json

import numpy as np
import pytest

from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.draws import draw
from discodiff.runtime.manifest import load_manifest
from discodiff.runtime.sampling import sample_batch
from tests.helpers import call, copy_tree, enospc, one_error_line, read_manifest, run_cli, sha256, tree_state


def fit_cli(*args) -> int:
    from discodiff.cli_util import run
    from discodiff.runtime.fit import cli as mod

    return run(mod.command, args=[str(a) for a in args], prog="discodiff-fit")


@pytest.fixture(scope="module")
def fitted(tiny, tmp_path_factory):
    b = copy_tree(tiny.bundle("toy8"), tmp_path_factory.mktemp("fit") / "bundle")
    graphs = {g: sha256(b / f"{g}.onnx") for g in ("denoiser", "prior_step")}
    assert fit_cli("--bundle", b, "--nfe", "4,6", "--solver", "dpm2m", "--quiet") == 0
    return b, graphs


def test_fits_are_in_the_manifest_and_beat_edm_on_held_out_seeds(fitted):
    b, graphs = fitted
    man = load_manifest(b)                                       # hash-checked and schema-checked
    assert sorted(man.sampling["fitted"], key=int) == ["4", "6"]
    for n in (4, 6):
        f = man.sampling["fitted"][str(n)]
        assert f["solver"] == "dpm2m" and f["nfe"] == n and len(f["sigmas"]) == n + 1 and f["sigmas"][-1] == 0
        assert f["sigmas"][0] == pytest.approx(man.meta.sigma_max)
        assert f["heldout_rmse"] < f["heldout_rmse_edm"]
        assert f["calibration"]["first_seed"] != f["heldout"]["first_seed"]
    assert {g: sha256(b / f"{g}.onnx") for g in graphs} == graphs   # graph files untouched


def test_run_with_nfe_uses_the_fit_and_equals_the_core(fitted, tmp_path, capsys):
    b, _ = fitted
    out = tmp_path / "out"
    rc, stdout, err = call(capsys, run_cli, "--bundle", b, "--out", out, "--n", 5, "--nfe", 6, "--quiet")
    assert rc == 0, err
    t = json.loads((out / "timing.json").read_text())
    assert (t["schedule"], t["solver"], t["nfe_per_sample"]) == ("fitted", "dpm2m", 6)
    assert t["denoiser_calls"] == 6 and "6 denoiser calls per sample" in stdout
    sig = np.asarray(read_manifest(b)["sampling"]["fitted"]["6"]["sigmas"])
    assert t["sigmas"] == sig.tolist()
    with Pipeline.open(b, backend="ort") as o:
        x, tok = sample_batch(o.model, draw(np.arange(5), o.model.meta), solver="dpm2m", sigmas=sig)
    with np.load(out / "samples.npz") as f:
        np.testing.assert_array_equal(f["x"], x)
        np.testing.assert_array_equal(f["tokens"], tok)


@pytest.mark.parametrize("args, words", [
    (["--nfe", "5", "--schedule", "fitted"], "discodiff-fit --bundle"),
    (["--nfe", "8", "--solver", "heun"], "odd"),
    (["--schedule", "fitted"], "needs nfe"),
    (["--nfe", "6", "--steps", "6"], "not both"),
])
def test_run_requests_the_bundle_cannot_serve(fitted, tmp_path, capsys, args, words):
    rc, _, err = call(capsys, run_cli, "--bundle", fitted[0], "--out", tmp_path / "o", "--n", 2, "--quiet", *args)
    one_error_line(rc, err, "discodiff-run", words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, words", [
    (["--nfe", "4,x"], "--nfe"), (["--nfe", "1"], "--nfe"), (["--nfe", "6", "--solver", "heun"], "odd"),
    (["--nfe", "4", "--solver", "rk4"], "--solver"),
])
def test_fit_bad_input_leaves_the_bundle_as_it_was(fitted, capsys, args, words):
    before = tree_state(fitted[0])
    rc, _, err = call(capsys, fit_cli, "--bundle", fitted[0], "--quiet", *args)
    one_error_line(rc, err, "discodiff-fit", words)
    assert tree_state(fitted[0]) == before


def test_a_full_disk_while_writing_the_manifest_keeps_the_old_one(fitted, tmp_path, capsys, monkeypatch):
    b = copy_tree(fitted[0], tmp_path / "bundle")
    before = tree_state(b)
    hit = enospc(monkeypatch, ".manifest.")
    rc, _, err = call(capsys, fit_cli, "--bundle", b, "--nfe", "5", "--solver", "euler", "--quiet")
    assert hit and rc == 1 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert tree_state(b) == before


def test_a_read_only_bundle_fails_in_one_line_before_fitting(tiny, small_fs, capsys):
    import subprocess

    b = copy_tree(tiny.bundle("toy8"), small_fs / "bundle")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    before = tree_state(small_fs)
    rc, out, err = call(capsys, fit_cli, "--bundle", b, "--nfe", "4")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and "Read-only file system" in lines[0], err
    assert "fitting" not in out + err and tree_state(small_fs) == before


# ---------------------------------------------------------------------------------------------
# Two fits of one bundle at once; --threads bounds


def test_two_fits_at_once_keep_both_fits(tiny, tmp_path):
    """Two real discodiff-fit processes on one bundle: both rewrite the manifest (under its lock, re-read
    there), so each one's fits survive the other's rewrite."""
    import os
    import subprocess

    from tests.helpers import VENV_BIN

    b = copy_tree(tiny.bundle("toy8"), tmp_path / "bundle")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(VENV_BIN / "discodiff-fit"), "--bundle", str(b), "--nfe", nfe, "--solver", "euler",
                               "--threads", "1", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for nfe in ("4,6,8", "5,7,9")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    man = load_manifest(b)
    assert sorted(man.sampling["fitted"], key=int) == ["4", "5", "6", "7", "8", "9"]
    assert sorted(p.name for p in b.iterdir() if p.name.startswith(".")) == []   # no lock or temp file left


def test_threads_beyond_the_cores_are_refused(fitted, capsys):
    import os

    before = tree_state(fitted[0])
    rc, _, err = call(capsys, fit_cli, "--bundle", fitted[0], "--nfe", "4", "--threads", (os.cpu_count() or 1) + 1)
    one_error_line(rc, err, "discodiff-fit", "--threads")
    assert tree_state(fitted[0]) == before
