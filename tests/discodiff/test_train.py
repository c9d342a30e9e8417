"""discodiff-train end to end (in-process CLI): files, reload, resume, dry run, refusal, overwrite."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import copy_tree, train_cli as train, tree_digest
from discodiff import checkpoint as ckpt
from discodiff import rundir
from discodiff.rundir import RUN_FILES
from discodiff.train.metrics import read_metrics


def steps_of(run: Path, stage: int) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["stage"] == stage]


@pytest.fixture(params=["toy8", "shapes"])
def run_dir(request) -> Path:
    return request.getfixturevalue(f"{request.param}_run")


def test_run_writes_its_files(run_dir):
    for f in RUN_FILES:
        assert (run_dir / f).is_file() and (run_dir / f).stat().st_size > 0, f
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []  # atomic writes leave no temp files
    for png in ("loss.png", "samples.png"):
        img = cv2.imread(str(run_dir / png))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 50
    opts = json.loads((run_dir / "training_options.json").read_text())
    info = ckpt.read_info(run_dir / "model.safetensors")
    assert opts["model"] == info["model"]
    assert info["train"]["steps"] == opts["train"]["steps"]
    assert info["train"]["prior_steps"] == opts["train"]["prior_steps"]
    tc = opts["train"]
    s1 = steps_of(run_dir, 1)
    assert s1 == sorted(set(list(range(tc["log_every"], tc["steps"] + 1, tc["log_every"])) + [tc["steps"]]))
    assert steps_of(run_dir, 2)[-1] == tc["prior_steps"]
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_toy8_options_and_metadata(toy8_run):
    opts = json.loads((toy8_run / "training_options.json").read_text())
    assert opts["name"] == "toy8-tiny" and opts["preset"] == "toy8-tiny"
    assert opts["train"]["steps"] == 20 and opts["train"]["prior_steps"] == 10
    info = ckpt.read_info(toy8_run / "model.safetensors")
    assert info["data"]["n"] == 512 and info["data"]["data_shape"] == [2]
    assert steps_of(toy8_run, 1) == [5, 10, 15, 20] and steps_of(toy8_run, 2) == [5, 10]


def _fixed_inputs(model):
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    b = 5
    x = torch.randn(b, *cfg.data_shape, generator=g) * 3
    sigma = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0])
    tokens = torch.randint(cfg.k + 1, (b, cfg.m), generator=g)  # k = the null code
    labels = torch.randint(cfg.num_classes, (b,), generator=g) if cfg.num_classes else None
    return x, sigma, tokens, labels


@torch.no_grad()
def _outputs(model):
    x, sigma, tokens, labels = _fixed_inputs(model)
    cfg = model.cfg
    prior_in = torch.cat([torch.full((5, 1), cfg.num_classes) if labels is None else labels[:, None],
                          tokens[:, :-1].clamp_max(cfg.k - 1)], 1)
    return [model.denoiser(x, sigma, tokens=tokens, class_labels=labels), model.encoder(x), model.prior(prior_in)]


def test_save_and_load_are_bit_identical(run_dir, tmp_path):
    path = run_dir / "model.safetensors"
    m1, info1 = ckpt.load_model(path)
    m2, info2 = ckpt.load_model(path)
    assert info1 == info2
    assert not m1.training
    out1 = _outputs(m1)
    for a, b in zip(out1, _outputs(m2)):
        assert torch.equal(a, b)
    copy = tmp_path / "copy.safetensors"
    extra = {k: v for k, v in info1.items() if k not in ("schema", "model")}
    ckpt.save_model(copy, m1, m1.cfg, extra)
    m3, info3 = ckpt.load_model(copy)
    assert info3 == info1
    for a, b in zip(out1, _outputs(m3)):
        assert torch.equal(a, b)
    t1, t3 = load_file(str(path)), load_file(str(copy))
    assert t1.keys() == t3.keys() and all(torch.equal(t1[k], t3[k]) for k in t1)
    assert {k.split(".")[0] for k in t1} == {"denoiser", "encoder", "prior"}
    # the outputs are sane: finite, right shapes, encoder logits [B, m, k]
    assert out1[0].shape == (5, *m1.cfg.data_shape) and torch.isfinite(out1[0]).all()
    assert out1[1].shape == (5, m1.cfg.m, m1.cfg.k)


def test_train_state_round_trips(toy8_run):
    st = ckpt.load_state(toy8_run / rundir.STATE_FILE)
    assert st["step1"] == 20 and st["step2"] == 10
    assert set(st) >= {"model", "ema", "opt1", "opt2"}
    # the saved EMA is what model.safetensors holds
    model = load_file(str(toy8_run / "model.safetensors"))
    for k, v in model.items():
        assert torch.equal(st["ema"][k], v), k


# ---------------------------------------------------------------------------------------------
# Resume


RESUME_CASES = {  # preset: (first stage-1 steps N1, final stage-1 steps N2, prior steps)
    "toy8-tiny": (5, 10, 4),
    "shapes-tiny": (4, 6, 2),   # N1 a multiple of log_every (2), so the log rows line up
}


@pytest.fixture(scope="module", params=list(RESUME_CASES))
def resumed(request, tmp_path_factory):
    """(straight run to N2, run to N1 then --resume --steps N2) for one preset."""
    preset = request.param
    n1, n2, p = RESUME_CASES[preset]
    root = tmp_path_factory.mktemp(f"resume-{preset}")
    straight, parts = root / "straight", root / "parts"
    assert train("--preset", preset, "--out", straight, "--quiet", "--steps", n2, "--prior-steps", p) == 0
    assert train("--preset", preset, "--out", parts, "--quiet", "--steps", n1, "--prior-steps", p) == 0
    first_metrics = read_metrics(parts / "metrics.jsonl")
    assert train("--out", parts, "--quiet", "--resume", "--steps", n2) == 0
    return preset, straight, parts, first_metrics


def test_resume_continues_the_step_count(resumed):
    preset, straight, parts, first = resumed
    n1, n2, p = RESUME_CASES[preset]
    old_last = max(r["step"] for r in first if r["stage"] == 1)
    assert old_last == n1
    s1 = steps_of(parts, 1)
    assert s1[-1] == n2 and any(s > old_last for s in s1)
    assert s1 == steps_of(straight, 1)              # no duplicated or lost log lines
    assert steps_of(parts, 2) == steps_of(straight, 2)
    opts = json.loads((parts / "training_options.json").read_text())
    assert opts["train"]["steps"] == n2 and opts["train"]["prior_steps"] == p
    assert opts["name"] == preset
    info = ckpt.read_info(parts / "model.safetensors")
    assert info["train"]["steps"] == n2
    assert ckpt.load_state(parts / rundir.STATE_FILE)["step1"] == n2


def test_resume_stage1_losses_match_the_straight_run(resumed):
    _, straight, parts, _ = resumed
    a = [r["loss"] for r in read_metrics(straight / "metrics.jsonl") if r["stage"] == 1]
    b = [r["loss"] for r in read_metrics(parts / "metrics.jsonl") if r["stage"] == 1]
    assert a == b


def test_resume_equals_straight_run_denoiser_and_encoder(resumed):
    _, straight, parts, _ = resumed
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("denoiser.", "encoder.")):
            assert torch.equal(a[k], b[k]), k


def test_resume_equals_straight_run_prior(resumed):
    _, straight, parts, _ = resumed
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    bad = [k for k in a if k.startswith("prior.") and not torch.equal(a[k], b[k])]
    assert bad == []


def test_resume_keeps_the_recorded_preset(resumed):
    preset, _, parts, _ = resumed
    assert json.loads((parts / "training_options.json").read_text())["preset"] == preset


# ---------------------------------------------------------------------------------------------
# Dry run, refusal, overwrite


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    assert train("--preset", "toy8-tiny", "--out", out, "--dry-run", "--steps", "7") == 0
    assert not out.exists()
    opts = json.loads(capsys.readouterr().out)
    assert opts["train"]["steps"] == 7 and opts["name"] == "toy8-tiny"
    assert opts["model"]["data_shape"] == [2]


def test_existing_run_is_refused_without_resume_or_overwrite(toy8_run, tmp_path, capfd):
    out = copy_tree(toy8_run, tmp_path / "run")
    before = tree_digest(out)
    capfd.readouterr()
    assert train("--preset", "toy8-tiny", "--out", out, "--quiet") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert tree_digest(out) == before
    assert train("--preset", "toy8-tiny", "--out", out, "--quiet", "--resume", "--overwrite") == 2
    assert tree_digest(out) == before


def test_overwrite_replaces_the_run(toy8_run, tmp_path):
    out = copy_tree(toy8_run, tmp_path / "run")
    old = load_file(str(out / "model.safetensors"))
    assert train("--preset", "toy8-tiny", "--out", out, "--quiet", "--overwrite", "--steps", "3",
                 "--prior-steps", "2") == 0
    assert steps_of(out, 1) == [3] and steps_of(out, 2) == [2]
    assert ckpt.read_info(out / "model.safetensors")["train"]["steps"] == 3
    assert json.loads((out / "training_options.json").read_text())["train"]["steps"] == 3
    new = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(old[k], new[k]) for k in old)


# ---------------------------------------------------------------------------------------------
# Untrained checkpoints and the size presets


def test_init_only_writes_the_untrained_model_in_the_same_format(tmp_path):
    out = tmp_path / "init"
    assert train("--preset", "shapes-tiny", "--init-only", "--out", out, "--quiet") == 0
    model, info = ckpt.load_model(out / "model.safetensors")
    assert info["train"]["init_only"] is True and info["train"]["steps"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "training_options.json"]
    torch.manual_seed(0)   # the weights training would start from (same seed)
    from discodiff.networks import DisCoDiff

    fresh = DisCoDiff(model.cfg).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())


def test_size_presets_have_published_sizes():
    from discodiff import presets
    from discodiff.networks import DisCoDiff

    sizes = {}
    for name in presets.SIZE_PRESETS:
        with torch.device("meta"):
            m = DisCoDiff(presets.get(name)[1])
        sizes[name] = sum(p.numel() for p in m.denoiser.parameters())
    assert 50e6 <= sizes["cifar-size"] <= 60e6
    assert 280e6 <= sizes["in64-size"] <= 320e6
    assert sizes["xl"] > 550e6 and 4 * sizes["xl"] > 2 * 2**30      # its fp32 graph is past the 2 GB limit
    assert presets.get("in64-size")[1].prior.depth == 12
