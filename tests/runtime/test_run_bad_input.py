"""`discodiff-run` with bad input: exit code 2, exactly one stderr line, and --out left exactly as it was
(no new files, no temporary directories)."""
from __future__ import annotations

import pytest

from tests.helpers import call, copy_tree as copy_bundle, error_lines, flip_byte, read_manifest, run_cli, tree_state, \
    write_manifest


@pytest.fixture(scope="module")
def bundles(tiny, tmp_path_factory):
    """name -> bundle: the real toy8 / shapes bundles and damaged copies of toy8."""
    toy8, shapes = tiny.bundle("toy8"), tiny.bundle("shapes")
    base = tmp_path_factory.mktemp("bad-bundles")
    tampered = copy_bundle(toy8, base / "tampered")
    flip_byte(tampered / "denoiser.onnx")
    schema = copy_bundle(toy8, base / "schema")
    man = read_manifest(schema)
    man["schema"] = 99
    write_manifest(schema, man)
    dpm = copy_bundle(toy8, base / "dpm2m-default")      # as exported with --solver dpm2m
    man = read_manifest(dpm)
    man["sampling"]["solver"] = "dpm2m"
    write_manifest(dpm, man)
    return {"toy8": toy8, "shapes": shapes, "tampered": tampered, "schema": schema, "dpm2m": dpm,
            "missing": base / "does-not-exist"}


OK = ("--n", "2", "--batch", "2", "--steps", "2", "--solver", "euler")

CASES = {
    "n0": ("toy8", ["--n", "0", "--batch", "2"], "--n"),
    "n_negative": ("toy8", ["--n", "-3", "--batch", "2"], "--n"),
    "batch0": ("toy8", ["--n", "2", "--batch", "0"], "--batch"),
    "batch_above_max": ("toy8", ["--n", "2", "--batch", "9"], "--batch"),
    "steps0": ("toy8", [*OK[:4], "--steps", "0"], "--steps"),
    "seed_negative": ("toy8", [*OK, "--seed", "-1"], "--seed"),
    "n_not_int": ("toy8", ["--n", "two", "--batch", "2"], "--n"),
    "solver": ("toy8", [*OK, "--solver", "nope"], "--solver"),
    "backend": ("toy8", [*OK, "--backend", "nope"], "--backend"),
    "precision": ("toy8", [*OK, "--precision", "fp8"], "--precision"),
    "prior": ("toy8", [*OK, "--prior", "nope"], "--prior"),
    "device": ("toy8", [*OK, "--device", "tpu"], "--device"),
    "threads0": ("toy8", [*OK, "--threads", "0"], "--threads"),
    "top_k_negative": ("toy8", [*OK, "--top-k", "-1"], "--top-k"),
    "temperature_negative": ("toy8", [*OK, "--temperature", "-1"], "--temperature"),
    "missing_bundle": ("missing", list(OK), "does not exist"),
    "tampered": ("tampered", list(OK), "sha256"),
    "schema": ("schema", list(OK), "schema"),
    "shard_a/b": ("toy8", [*OK, "--shard", "a/b"], "--shard"),
    "shard_3/2": ("toy8", [*OK, "--shard", "3/2"], "--shard"),
    "shard_2/2": ("toy8", [*OK, "--shard", "2/2"], "--shard"),
    "shard_1/0": ("toy8", [*OK, "--shard", "1/0"], "--shard"),
    "shard_-1/2": ("toy8", [*OK, "--shard", "-1/2"], "--shard"),
    "shard_empty": ("toy8", [*OK, "--shard", ""], "--shard"),
    "class_99": ("shapes", [*OK, "--class", "99"], "--class"),
    "class_3": ("shapes", [*OK, "--class", "3"], "--class"),
    "class_unknown_name": ("shapes", [*OK, "--class", "hexagon"], "--class"),
    "class_negative": ("shapes", [*OK, "--class", "-1"], "--class"),
    "class_unconditional": ("toy8", [*OK, "--class", "0"], "unconditional"),
    "churn_dpm2m": ("toy8", [*OK, "--solver", "dpm2m", "--churn", "1"], "--churn"),
    "churn_negative": ("toy8", [*OK, "--churn", "-1"], "--churn"),
    "churn_with_bundle_default_dpm2m": ("dpm2m", [*OK[:6], "--churn", "1"], "--churn"),
    "trt_without_engines": ("toy8", [*OK, "--backend", "trt"], "TensorRT"),
    "unknown_option": ("toy8", [*OK, "--frobnicate"], "--frobnicate"),
    # numbers that are not what they look like
    "class_superscript_two": ("shapes", [*OK, "--class", "\u00b2"], "--class"),
    "n_arabic_digit": ("toy8", ["--n", "\u0663", "--batch", "2"], "--n"),
    "seed_int64_max": ("toy8", [*OK, "--seed", "9223372036854775807"], "--seed"),
    "seed_plus_n_overflow": ("toy8", [*OK, "--seed", str(2**62 - 1)], "--seed"),
    "guidance_nan": ("toy8", [*OK, "--guidance", "nan"], "--guidance"),
    "guidance_inf": ("toy8", [*OK, "--guidance", "inf"], "--guidance"),
    "temperature_nan": ("toy8", [*OK, "--temperature", "nan"], "--temperature"),
    "churn_nan": ("toy8", [*OK, "--churn", "nan"], "--churn"),
    "threads_huge": ("toy8", [*OK, "--threads", "100000"], "--threads"),
    # settings that would write garbage with exit 0
    "guidance_1e308": ("toy8", [*OK, "--guidance", "1e308"], "--guidance"),
    "temperature_huge": ("toy8", [*OK, "--temperature", "1e300"], "--temperature"),
    "top_k_above_codebook": ("toy8", [*OK, "--top-k", "9999"], "--top-k"),
    "heun_on_2_levels": ("toy8", [*OK[:6], "--solver", "heun"], "noise"),
    "nfe5_heun_named": ("toy8", ["--n", "2", "--nfe", "5", "--solver", "heun"], "noise"),
    "nfe_below_any_measured": ("toy8", ["--n", "2", "--nfe", "3"], "discodiff-fit"),
    "steps_huge": ("toy8", [*OK[:4], "--steps", "10001"], "--steps"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_out_untouched(bundles, tmp_path, capsys, case):
    which, args, word = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "sentinel.txt").write_text("do not touch")
    (out / "000000.npy").write_bytes(b"an older run's sample")
    before = tree_state(tmp_path)
    rc, stdout, err = call(capsys, run_cli, "--bundle", bundles[which], "--out", out, "--quiet", *args)
    lines = error_lines(err)
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("discodiff-run: error:"), lines[0]
    assert word in lines[0], lines[0]
    assert "Traceback" not in err
    assert tree_state(tmp_path) == before
    assert not list(out.glob(".discodiff-run-*"))


@pytest.mark.parametrize("case", ["n0", "tampered", "shard_3/2", "class_99", "trt_without_engines"])
def test_bad_input_does_not_create_out(bundles, tmp_path, capsys, case):
    which, args, word = CASES[case]
    out = tmp_path / "new" / "out"
    rc, _, err = call(capsys, run_cli, "--bundle", bundles[which], "--out", out, "--quiet", *args)
    assert rc == 2 and len(error_lines(err)) == 1 and word in err
    assert not out.exists() and not out.parent.exists()


def test_out_is_a_file(bundles, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("a file")
    rc, _, err = call(capsys, run_cli, "--bundle", bundles["toy8"], "--out", out, "--quiet", *OK)
    assert rc == 2 and len(error_lines(err)) == 1 and "--out" in err
    assert out.read_text() == "a file"


def test_more_shards_than_samples_is_not_a_crash(bundles, tmp_path, capsys):
    """--n 2 --shard 2/3: the last shard has no seeds. Either an empty shard run (exit 0) or one clear
    error line (exit 2) is acceptable; a traceback is not."""
    out = tmp_path / "out"
    rc, _, err = call(capsys, run_cli, "--bundle", bundles["toy8"], "--out", out, "--quiet", *OK, "--shard", "2/3")
    assert rc in (0, 2), err
    if rc == 2:
        assert len(error_lines(err)) == 1 and err.startswith("discodiff-run: error:")
        assert not out.exists()


def test_control_the_same_options_succeed(bundles, tmp_path, capsys):
    """Control: the good values next to the bad ones run fine, so the failures above are the bad values'."""
    for which, extra in (("toy8", ["--shard", "1/2"]), ("shapes", ["--class", "2"]),
                         ("toy8", ["--solver", "euler", "--churn", "1"]), ("dpm2m", [])):
        out = tmp_path / f"out-{which}-{len(extra)}"
        rc, _, err = call(capsys, run_cli, "--bundle", bundles[which], "--out", out, "--quiet", *OK, *extra)
        assert rc == 0, (which, extra, err)
        assert list(out.glob("samples*.npz"))
