"""`discodiff-run`'s outputs: files, batch-size and shard invariance, --class, --prior, --precision."""
from __future__ import annotations

import json

import cv2
import numpy as np

from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.draws import draw
from discodiff.runtime.sampling import sample_batch
from discodiff.sampling import TorchModel
from tests.helpers import call, read_manifest, run_cli

STEPS = 6


def draws_for(meta, seeds, class_label=None):
    return draw(np.asarray(seeds), meta, class_label)


def rgb_png(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def expected_u8(x: np.ndarray) -> np.ndarray:
    """float [3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    return np.clip(np.round((x.transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ CLI outputs


def cli_run(capsys, bundle, out, *args):
    rc, stdout, err = call(capsys, run_cli, "--bundle", bundle, "--out", out, "--quiet", *args)
    assert rc == 0, err
    return stdout


def npz(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def no_temp_dirs(out):
    assert not [p.name for p in out.iterdir() if p.name.startswith(".discodiff-run-")]


def test_run_outputs_vectors(toy8_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    stdout = cli_run(capsys, toy8_bundle, out, "--n", 5, "--seed", 10, "--batch", 5, "--steps", STEPS)
    seeds = np.arange(10, 15)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{s:06d}.npy" for s in seeds] + ["scatter.png", "samples.npz", "timing.json"])
    no_temp_dirs(out)
    with Pipeline.open(toy8_bundle, backend="ort") as o:
        x, tok = sample_batch(o.model, draws_for(o.model.meta, seeds), steps=STEPS)
    got = npz(out / "samples.npz")
    assert sorted(got) == ["labels", "seeds", "tokens", "x"]
    np.testing.assert_allclose(got["x"], x, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["tokens"], tok)
    np.testing.assert_array_equal(got["seeds"], seeds)
    np.testing.assert_array_equal(got["labels"], np.zeros(5))          # unconditional: the null label
    for i, s in enumerate(seeds):
        v = np.load(out / f"{s:06d}.npy")
        assert v.shape == (2,) and v.dtype == np.float32
        np.testing.assert_array_equal(v, got["x"][i])
    assert cv2.imread(str(out / "scatter.png")) is not None
    timing = json.loads((out / "timing.json").read_text())
    assert timing["samples"] == 5 and timing["seeds"] == [10, 14] and timing["backend"] == "ort"
    assert timing["solver"] == "heun" and timing["steps"] == STEPS and timing["nfe_per_sample"] == 2 * STEPS - 1
    assert timing["denoiser_graph"] == "denoiser" and timing["shard"] is None
    assert timing["graphs"]["denoiser"]["calls"] == 2 * STEPS - 1
    assert "5 samples" in stdout and str(out) in stdout


def test_run_outputs_images(shapes_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    cli_run(capsys, shapes_bundle, out, "--n", 4, "--batch", 4, "--steps", STEPS, "--solver", "dpm2m")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{s:06d}.png" for s in range(4)] + ["grid.png", "samples.npz", "timing.json"])
    no_temp_dirs(out)
    with Pipeline.open(shapes_bundle, backend="ort") as o:
        d = draws_for(o.model.meta, np.arange(4))
        x, tok = sample_batch(o.model, d, steps=STEPS, solver="dpm2m")
    got = npz(out / "samples.npz")
    np.testing.assert_allclose(got["x"], x, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["tokens"], tok)
    np.testing.assert_array_equal(got["labels"], d.labels)
    assert set(d.labels) <= {0, 1, 2}
    for i in range(4):
        img = rgb_png(out / f"{i:06d}.png")
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
        assert np.max(np.abs(img.astype(int) - expected_u8(got["x"][i]).astype(int))) <= 1
    grid = rgb_png(out / "grid.png")
    assert grid.ndim == 3 and grid.shape[0] > 8 and grid.shape[1] > 8
    timing = json.loads((out / "timing.json").read_text())
    assert timing["solver"] == "dpm2m" and timing["nfe_per_sample"] == STEPS


def test_same_samples_with_batch_1_and_5(shapes_bundle, tmp_path, capsys):
    a, b = tmp_path / "b1", tmp_path / "b5"
    cli_run(capsys, shapes_bundle, a, "--n", 5, "--batch", 1, "--steps", STEPS)
    cli_run(capsys, shapes_bundle, b, "--n", 5, "--batch", 5, "--steps", STEPS)
    ga, gb = npz(a / "samples.npz"), npz(b / "samples.npz")
    np.testing.assert_array_equal(ga["tokens"], gb["tokens"])
    np.testing.assert_array_equal(ga["labels"], gb["labels"])
    np.testing.assert_array_equal(ga["seeds"], gb["seeds"])
    np.testing.assert_allclose(ga["x"], gb["x"], rtol=0, atol=1e-5)
    for s in range(5):
        ia, ib = rgb_png(a / f"{s:06d}.png"), rgb_png(b / f"{s:06d}.png")
        assert np.max(np.abs(ia.astype(int) - ib.astype(int))) <= 1
    assert json.loads((a / "timing.json").read_text())["graphs"]["denoiser"]["calls"] == 5 * (2 * STEPS - 1)
    assert json.loads((b / "timing.json").read_text())["graphs"]["denoiser"]["calls"] == 2 * STEPS - 1


def _per_sample(out, ext):
    return {p.name: p.read_bytes() for p in sorted(out.glob(f"*.{ext}")) if p.stem.isdigit()}


def test_shards_union_equals_unsharded_run_images(shapes_bundle, tmp_path, capsys):
    """Same batch grouping in both runs (--batch 2, 6 seeds, 3 shards): the files are byte-identical."""
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    cli_run(capsys, shapes_bundle, full, "--n", 6, "--batch", 2, "--steps", STEPS)
    for i in range(3):
        cli_run(capsys, shapes_bundle, sharded, "--n", 6, "--batch", 2, "--steps", STEPS, "--shard", f"{i}/3")
    pf, ps = _per_sample(full, "png"), _per_sample(sharded, "png")
    assert sorted(pf) == [f"{s:06d}.png" for s in range(6)]
    assert sorted(ps) == sorted(pf)
    for name in pf:
        assert ps[name] == pf[name], name
    shard_files = sorted(p.name for p in sharded.iterdir() if not p.stem.isdigit())
    assert shard_files == sorted(f"{kind}-shard{i}of3.{ext}" for i in range(3)
                                 for kind, ext in (("grid", "png"), ("samples", "npz"), ("timing", "json")))
    parts = [npz(sharded / f"samples-shard{i}of3.npz") for i in range(3)]
    whole = npz(full / "samples.npz")
    for key in ("x", "tokens", "labels", "seeds"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    t1 = json.loads((sharded / "timing-shard1of3.json").read_text())
    assert t1["shard"] == [1, 3] and t1["seeds"] == [2, 3] and t1["samples"] == 2
    no_temp_dirs(sharded)


def test_shards_union_equals_unsharded_run_vectors(toy8_bundle, tmp_path, capsys):
    """Uneven shards (7 seeds -> 3 + 2 + 2) and a different batch grouping than the unsharded run."""
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    cli_run(capsys, toy8_bundle, full, "--n", 7, "--seed", 3, "--batch", 4, "--steps", STEPS)
    for i in range(3):
        cli_run(capsys, toy8_bundle, sharded, "--n", 7, "--seed", 3, "--batch", 4, "--steps", STEPS,
                "--shard", f"{i}/3")
    pf, ps = _per_sample(full, "npy"), _per_sample(sharded, "npy")
    assert sorted(pf) == [f"{s:06d}.npy" for s in range(3, 10)] == sorted(ps)
    for name in pf:
        np.testing.assert_allclose(np.load(sharded / name), np.load(full / name), rtol=0, atol=1e-6)
    seeds = [npz(sharded / f"samples-shard{i}of3.npz")["seeds"].tolist() for i in range(3)]
    assert seeds == [[3, 4, 5], [6, 7], [8, 9]]


def test_class_by_index_and_by_name(shapes_bundle, shapes_model, tmp_path, capsys):
    names = read_manifest(shapes_bundle)["class_names"]
    name = names[1]
    a, b = tmp_path / "idx", tmp_path / "name"
    cli_run(capsys, shapes_bundle, a, "--n", 4, "--batch", 4, "--steps", STEPS, "--class", "1")
    cli_run(capsys, shapes_bundle, b, "--n", 4, "--batch", 4, "--steps", STEPS, "--class", name)
    ga, gb = npz(a / "samples.npz"), npz(b / "samples.npz")
    np.testing.assert_array_equal(ga["labels"], np.ones(4))
    for key in ("x", "tokens", "labels"):
        np.testing.assert_array_equal(ga[key], gb[key])
    tm = TorchModel(shapes_model)
    ref_x, ref_tok = sample_batch(tm, draws_for(tm.meta, np.arange(4), class_label=1), steps=STEPS)
    np.testing.assert_array_equal(ga["tokens"], ref_tok)
    assert np.max(np.abs(ga["x"] - ref_x)) <= 1e-4
    c = tmp_path / "other"
    cli_run(capsys, shapes_bundle, c, "--n", 4, "--batch", 4, "--steps", STEPS, "--class", names[2])
    np.testing.assert_array_equal(npz(c / "samples.npz")["labels"], np.full(4, 2))


def test_prior_recompute_same_tokens_as_cache_cli(shapes_bundle, tmp_path, capsys):
    a, b = tmp_path / "cache", tmp_path / "recompute"
    cli_run(capsys, shapes_bundle, a, "--n", 6, "--batch", 3, "--steps", STEPS, "--prior", "cache")
    cli_run(capsys, shapes_bundle, b, "--n", 6, "--batch", 3, "--steps", STEPS, "--prior", "recompute")
    ga, gb = npz(a / "samples.npz"), npz(b / "samples.npz")
    np.testing.assert_array_equal(ga["tokens"], gb["tokens"])
    np.testing.assert_array_equal(ga["x"], gb["x"])
    ta, tb = (json.loads((d / "timing.json").read_text()) for d in (a, b))
    assert "prior_step" in ta["graphs"] and "prior_recompute" not in ta["graphs"]
    assert "prior_recompute" in tb["graphs"] and "prior_step" not in tb["graphs"]


def test_fp16_precision_runs_close_to_fp32(shapes_bundle, tmp_path, capsys):
    a, b = tmp_path / "fp32", tmp_path / "fp16"
    cli_run(capsys, shapes_bundle, a, "--n", 3, "--batch", 3, "--steps", STEPS, "--precision", "fp32")
    cli_run(capsys, shapes_bundle, b, "--n", 3, "--batch", 3, "--steps", STEPS, "--precision", "fp16")
    ga, gb = npz(a / "samples.npz"), npz(b / "samples.npz")
    np.testing.assert_array_equal(ga["tokens"], gb["tokens"])
    rel = np.linalg.norm(ga["x"] - gb["x"]) / np.linalg.norm(ga["x"])
    assert 0 < rel < 1e-2
    assert json.loads((b / "timing.json").read_text())["denoiser_graph"] == "denoiser_fp16"


def test_rerun_into_same_out_replaces_same_seed_files_and_keeps_others(toy8_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    cli_run(capsys, toy8_bundle, out, "--n", 2, "--batch", 2, "--steps", STEPS)
    cli_run(capsys, toy8_bundle, out, "--n", 2, "--seed", 1, "--batch", 2, "--steps", STEPS)
    assert (out / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in out.glob("*.npy")) == ["000000.npy", "000001.npy", "000002.npy"]
    np.testing.assert_array_equal(npz(out / "samples.npz")["seeds"], [1, 2])


def test_nfe_without_a_fit_says_which_setting_it_used(capsys, toy8_bundle, tmp_path):
    """--nfe 6 on a bundle with no fit: the best unfitted setting measured for 6 calls, one line saying so
    (and how to fit), the choice recorded in timing.json; the samples are those of that setting named."""
    rc, _, err = call(capsys, run_cli, "--bundle", toy8_bundle, "--out", tmp_path / "a", "--n", 3, "--nfe", 6)
    assert rc == 0, err
    note = [line for line in err.splitlines() if "6 calls:" in line]
    assert len(note) == 1 and "dpm2m on logsnr" in note[0] and "discodiff-fit --bundle" in note[0]
    t = json.loads((tmp_path / "a" / "timing.json").read_text())
    assert (t["solver"], t["schedule"], t["nfe_per_sample"]) == ("dpm2m", "logsnr", 6) and t["note"] == note[0]
    cli_run(capsys, toy8_bundle, tmp_path / "b", "--n", 3, "--solver", "dpm2m", "--schedule", "logsnr", "--steps", 6)
    np.testing.assert_array_equal(npz(tmp_path / "a" / "samples.npz")["x"], npz(tmp_path / "b" / "samples.npz")["x"])
