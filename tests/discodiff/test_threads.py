"""discodiff-train's CPU thread policy (discodiff/train/threads.py): one count per run, chosen from the
load at start and saved with the state, so --resume is bit-exact whatever the load is then; and
--share-cores, which follows real load (a spinning process) between steps."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from discodiff import checkpoint as ckpt
from discodiff import rundir
from discodiff.runtime.cpu import cores
from discodiff.train import threads
from tests.helpers import train_cli as train

MULTI = pytest.mark.skipif(cores() < 2, reason="needs 2 or more cores to vary the thread count")


def test_explicit_then_saved_then_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose(3, False, saved=2).threads == 3
    p = threads.choose(None, False, saved=2)
    assert p.threads == 2 and "saved" in p.reason
    p = threads.choose(None, False)
    assert p.threads == 1 and "OMP_NUM_THREADS" in p.reason
    assert threads.choose(None, True, saved=2).share        # --share-cores re-decides, the saved count aside


@pytest.fixture
def spinners():
    """Real processes that keep every core busy (what a second sampler or training run does); robust to
    whatever else runs (a second test worker): the free cores are then at most one."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores())]
    time.sleep(0.5)
    yield
    for p in procs:
        p.kill()
        p.wait()


@MULTI
def test_auto_on_a_busy_machine_takes_one_thread_and_keeps_it(monkeypatch, spinners):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = threads.choose(None, False)
    assert p.threads == 1 and not p.share, p.reason
    p.between_steps()
    assert p.threads == 1


@MULTI
def test_share_cores_reads_real_load_between_steps(monkeypatch, spinners):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    old = torch.get_num_threads()
    try:
        p = threads.choose(4, True).apply()           # start high; the real load probe must bring it down
        for _ in range(12):
            p.between_steps()
            time.sleep(0.02)
        assert p.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_share_cores_follows_the_median_of_the_last_nine_samples():
    """The rule on a given load sequence: a lone spike does not resize the pool, a lasting change does,
    both ways."""
    old = torch.get_num_threads()
    n = cores()
    load = iter([0] * 9 + [n] + [0] * 8 + [n] * 5 + [0] * 9)
    p = threads.ThreadPolicy(n, "test", share=True, probe=lambda: float(next(load)))
    seen = []
    try:
        for _ in range(9 + 1 + 8 + 5 + 9):
            p.between_steps()
            seen.append(p.threads)
    finally:
        torch.set_num_threads(old)
    assert seen[:18] == [n] * 18                                  # one busy sample among nine: no change
    assert seen[22] == 1 and min(seen) == 1                       # five busy of the last nine: give cores up
    assert seen[-1] == n                                          # idle again: take them back


@MULTI
def test_resume_keeps_the_saved_thread_count(tmp_path, monkeypatch):
    """A run trained with 2 threads and resumed where the environment says 1 thread ends bit-identical to
    an uninterrupted 2-thread run; resumed with --threads 1 instead, it differs (the control: the count
    matters for these weights)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = ("--preset", "shapes-tiny", "--quiet", "--prior-steps", "2")
    straight = tmp_path / "straight"
    assert train(*common, "--out", straight, "--steps", "6", "--threads", "2") == 0
    finals = {}
    for name, extra in (("saved", ()), ("forced", ("--threads", "1"))):
        run = tmp_path / name
        assert train(*common, "--out", run, "--steps", "2", "--threads", "2") == 0
        assert ckpt.load_state(run / rundir.STATE_FILE)["threads"] == 2
        assert train("--out", run, "--quiet", "--resume", "--steps", "6", *extra) == 0
        finals[name] = load_file(str(run / "model.safetensors"))
    ref = load_file(str(straight / "model.safetensors"))
    den = [k for k in ref if k.startswith("denoiser.")]
    assert all(torch.equal(ref[k], finals["saved"][k]) for k in den)
    assert not all(torch.equal(ref[k], finals["forced"][k]) for k in den)


def test_a_share_cores_run_resumes_sharing(tmp_path, capfd):
    run = tmp_path / "run"
    assert train("--preset", "toy8-tiny", "--out", run, "--quiet", "--steps", "2", "--prior-steps", "1",
                 "--share-cores") == 0
    assert ckpt.load_state(run / rundir.STATE_FILE)["share"] is True
    assert train("--out", run, "--resume", "--steps", "4") == 0
    assert "--share-cores" in capfd.readouterr().err
    assert ckpt.load_state(run / rundir.STATE_FILE)["share"] is True
