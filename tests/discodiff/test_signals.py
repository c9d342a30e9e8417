"""Runs that survive being stopped: real `discodiff-train` processes signalled at random points of both
stages stop after the step in progress, save, print one line on how to resume and exit 128 + signal;
resuming them gives a model and training state bit-identical to a run that was never stopped. Also:
a torn metrics line, a damaged options file, and temp files a killed save left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from discodiff import rundir
from discodiff.checkpoint import load_state
from discodiff.train.metrics import read_metrics
from tests.helpers import VENV_BIN, copy_tree, one_error_line, train_cli

ARGS = ["--preset", "toy8-tiny", "--steps", "300", "--prior-steps", "200", "--save-every", "100000", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(VENV_BIN / "discodiff-train"), *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for(out: Path, stage: int, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until metrics.jsonl shows `stage` at `step` or later (the run is inside that stage's loop)."""
    end = time.time() + timeout
    while time.time() < end:
        rows = read_metrics(out / rundir.METRICS_FILE)
        if any(r["stage"] == stage and r["step"] >= step for r in rows) or any(r["stage"] > stage for r in rows):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before stage {stage} step {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the run")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    p = _start(out)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    return out


def _tensors(path: Path) -> dict:
    return load_file(str(path))


RNG = np.random.default_rng(20261123)
TRIALS = [("SIGINT", 1), ("SIGTERM", 2), ("SIGHUP", 1)]   # every signal, both stages


@pytest.mark.slow
@pytest.mark.parametrize("sig, stage", TRIALS, ids=[f"{s}-stage{st}" for s, st in TRIALS])
def test_stopped_at_a_random_step_then_resumed_is_bit_identical(straight, tmp_path, sig, stage):
    out = tmp_path / "run"
    target = int(RNG.integers(5, 190))
    proc = _start(out)
    _wait_for(out, stage, target, proc)
    time.sleep(float(RNG.uniform(0, 0.05)))   # land anywhere inside a step, not just after a log row
    proc.send_signal(getattr(signal, sig))
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert rc == 128 + getattr(signal, sig), (rc, err)
    line = one_error_line(2, err, "discodiff-train", "stopped by " + sig, "--resume", str(out))
    st = load_state(out / rundir.STATE_FILE)
    step1, step2 = int(st["step1"]), int(st["step2"])
    assert f"stage {stage} step {step1 if stage == 1 else step2}" in line, line
    if stage == 1:
        assert 0 < step1 < 300 and step2 == 0
    else:
        assert step1 == 300 and 0 < step2 < 200
    # optimiser step, EMA and counter were saved as one unit: the optimiser's own step count is the counter
    opt, counter = (st["opt1"], step1) if stage == 1 else (st["opt2"], step2)
    assert {float(v["step"]) for v in opt["state"].values()} == {float(counter)}
    # resume to the end: bit-identical to the run that never stopped
    p = subprocess.run([str(VENV_BIN / "discodiff-train"), "--out", str(out), "--resume", "--quiet"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    for name in (rundir.MODEL_FILE, rundir.STATE_FILE):
        a, b = _tensors(straight / name), _tensors(out / name)
        assert a.keys() == b.keys()
        bad = [k for k in a if not np.array_equal(a[k], b[k])]
        assert bad == [], (name, len(bad), bad[:3])
    assert [(r["stage"], r["step"]) for r in read_metrics(out / rundir.METRICS_FILE)] == \
           [(r["stage"], r["step"]) for r in read_metrics(straight / rundir.METRICS_FILE)]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_adam_step_count_equals_the_saved_counter(toy8_run):
    """In a saved state, every parameter's Adam step equals step1 (the unit the signal handling keeps)."""
    st = load_state(toy8_run / rundir.STATE_FILE)
    steps = {float(v["step"]) for v in st["opt1"]["state"].values()}
    assert steps == {float(st["step1"])}


# ---------------------------------------------------------------------------------------------
# Damaged run files on --resume


def test_a_torn_last_metrics_line_is_dropped_on_resume(toy8_run, tmp_path):
    out = copy_tree(toy8_run, tmp_path / "run")
    rows = read_metrics(out / rundir.METRICS_FILE)
    with open(out / rundir.METRICS_FILE, "a") as f:
        f.write('{"stage": 2, "step": 15, "loss": 0.')                # a kill in the middle of a write
    assert train_cli("--out", out, "--resume", "--prior-steps", "15", "--quiet") == 0
    after = read_metrics(out / rundir.METRICS_FILE)
    assert after[: len(rows)] == rows and after[-1]["stage"] == 2 and after[-1]["step"] == 15
    assert all(line.startswith("{") and line.endswith("}")
               for line in (out / rundir.METRICS_FILE).read_text().splitlines())


@pytest.mark.parametrize("damage", ["truncated", "unknown_key", "wrong_type", "not_json"])
def test_a_damaged_options_file_gives_one_line_on_resume(toy8_run, tmp_path, capsys, damage):
    out = copy_tree(toy8_run, tmp_path / "run")
    path = out / rundir.OPTIONS_FILE
    text = path.read_text()
    opts = json.loads(text)
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "unknown_key":
        opts["train"]["warp_speed"] = 9
        path.write_text(json.dumps(opts))
    elif damage == "wrong_type":
        opts["model"]["k"] = "8"
        path.write_text(json.dumps(opts))
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    rc = train_cli("--out", out, "--resume", "--quiet")
    one_error_line(rc, capsys.readouterr().err, "discodiff-train")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_temp_files_of_a_killed_save_are_reclaimed(toy8_run, tmp_path):
    """A kill during an atomic save leaves `.train_state.<pid>.<rand>.safetensors.tmp`; the next run in
    that folder removes it (its writer is gone), and leaves temp files of a live process alone."""
    out = copy_tree(toy8_run, tmp_path / "run")
    gone = subprocess.Popen(["true"])
    gone.wait()                                    # its PID now names a process that no longer runs
    stale = out / f".train_state.{gone.pid}.abc123.safetensors.tmp"
    stale.write_bytes(b"half a state")
    live = out / f".model.{os.getppid()}.xyz.safetensors.tmp"
    live.write_bytes(b"someone else's save in progress")
    assert train_cli("--out", out, "--resume", "--prior-steps", "11", "--quiet") == 0
    assert not stale.exists()
    assert live.exists()
