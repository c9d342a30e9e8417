"""One writer per run directory (and per bundle): the directory lock, with real processes. A second
discodiff-train into a busy --out is refused in one line naming the holder's PID and changes nothing;
a killed holder leaves nothing stuck. Also: nothing is removed or written through a symlinked run entry,
and --resume names the CLI option it refuses."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discodiff import rundir
from discodiff.errors import UserError
from discodiff.lock import LOCK_FILE, DirLock
from discodiff.train.metrics import read_metrics
from tests.helpers import VENV_BIN, copy_tree, one_error_line, train_cli, tree_digest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
HOLD = ("import os, sys, time\nfrom discodiff.lock import DirLock\n"
        "lock = DirLock(sys.argv[1], sys.argv[2], 'busy').acquire()\n"
        "if sys.argv[3] == 'anonymous': os.ftruncate(lock.fd, 0)\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


@contextlib.contextmanager
def held_by_another_process(directory: Path, program: str, anonymous: bool = False):
    """A real process holding `directory`'s lock as `program` until the block ends (then SIGKILLed);
    `anonymous`: its lock file records no pid, so only the flock itself refuses others."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), program, "anonymous" if anonymous else "-"],
                         stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait()


def _wait_until(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the run")


# ---------------------------------------------------------------------------------------------
# The lock itself


def test_the_lock_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    with held_by_another_process(tmp_path, "discodiff-fit") as p:
        for wait in (0.0, 0.3):
            with pytest.raises(UserError) as e:
                DirLock(tmp_path, "discodiff-export", "try again later").acquire(wait)
            assert f"discodiff-fit (pid {p.pid})" in str(e.value) and "try again later" in str(e.value)
    assert (tmp_path / LOCK_FILE).exists()            # the killed holder's file stays, naming a dead pid ...
    with DirLock(tmp_path, "discodiff-export", "x").acquire():   # ... and blocks nobody
        assert (tmp_path / LOCK_FILE).read_text().split() == [str(os.getpid()), "discodiff-export"]
    assert list(tmp_path.iterdir()) == []             # released: removed


def test_a_linked_lock_file_is_never_written_through(tmp_path):
    target = tmp_path / "users_file"
    target.write_text("keep me")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / LOCK_FILE).symlink_to(target)
    with pytest.raises(UserError, match="symbolic link"):
        DirLock(tmp_path / "d", "discodiff-train", "x").acquire()
    assert target.read_text() == "keep me"


def test_the_lock_file_is_the_runs_own(tmp_path):
    """What a killed run leaves: the lock file alone is an EMPTY folder, beside options a STALE run,
    and clearing the run keeps it (the clearing run holds it)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("999999999 discodiff-train\n")
    assert rundir.classify(out) == rundir.EMPTY
    (out / rundir.OPTIONS_FILE).write_text('{"format": "discodiff-run", "schema": 1, "name": "toy8-tiny"}')
    assert rundir.classify(out) == rundir.STALE
    assert out / LOCK_FILE not in rundir.own_files(out)
    rundir.clear_run(out)
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


# ---------------------------------------------------------------------------------------------
# Two discodiff-train runs into one --out


def test_a_second_run_into_a_busy_out_is_refused_and_changes_nothing(tmp_path, capfd):
    out = tmp_path / "run"
    a = subprocess.Popen([str(VENV_BIN / "discodiff-train"), "--preset", "toy8-tiny", "--steps", "100000",
                          "--prior-steps", "1", "--save-every", "5", "--quiet", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_until(lambda: (out / rundir.STATE_FILE).is_file() and (out / LOCK_FILE).is_file()
                    and (out / LOCK_FILE).read_text().startswith(f"{a.pid} "), a)
        os.kill(a.pid, signal.SIGSTOP)               # A holds the lock, and nothing changes while B tries
        before = tree_digest(out)
        for flags in ([], ["--overwrite"], ["--resume"], ["--init-only", "--overwrite"]):
            capfd.readouterr()
            rc = train_cli("--preset", "toy8-tiny", "--out", out, "--quiet", "--steps", "3", *flags)
            line = one_error_line(rc, capfd.readouterr().err, "discodiff-train", f"discodiff-train (pid {a.pid})",
                                  "nothing was changed")
            assert str(out) in line
            assert tree_digest(out) == before, flags
    finally:
        a.kill()                                      # SIGKILL: the run cannot release anything itself
        a.wait()
    # A killed run leaves its lock file, which stops nobody: the next run takes the directory over.
    assert (out / LOCK_FILE).is_file() and rundir.classify(out) == rundir.RUN
    assert train_cli("--preset", "toy8-tiny", "--out", out, "--quiet", "--overwrite", "--steps", "4",
                     "--prior-steps", "2") == 0
    steps = [r["step"] for r in read_metrics(out / rundir.METRICS_FILE) if r["stage"] == 1]
    assert steps == sorted(set(steps)) and steps[-1] == 4      # one writer: no merged, duplicated steps
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_under_torchrun_a_refused_lock_ends_every_rank(tmp_path):
    """Rank 0 takes the lock (here held by a process whose file names no pid, so the flock itself
    refuses); the other rank learns it and ends too, instead of waiting in a collective."""
    from tests.helpers import free_port

    out = tmp_path / "run"
    out.mkdir()
    with held_by_another_process(out, "discodiff-train", anonymous=True):
        cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
               str(free_port()), "-m", "discodiff.train.cli", "--preset", "toy8-tiny", "--out", str(out), "--quiet"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=240)
        assert p.returncode != 0
        assert "discodiff-train: error:" in p.stderr and "is being written by another process" in p.stderr, p.stderr
        assert "rank 0 could not start the run" in p.stderr, p.stderr
        assert [x.name for x in out.iterdir()] == [LOCK_FILE]


# ---------------------------------------------------------------------------------------------
# Nothing through a link


def _linked_samples(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = copy_tree(run, tmp_path / "run")
    mine = tmp_path / "my pictures"
    mine.mkdir()
    (mine / "step-000001.png").write_bytes(b"my own picture")
    if (out / rundir.PROGRESS_DIR).exists():
        import shutil

        shutil.rmtree(out / rundir.PROGRESS_DIR)
    (out / rundir.PROGRESS_DIR).symlink_to(mine, target_is_directory=True)
    return out, mine


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"], ["--init-only", "--overwrite"]])
def test_a_symlinked_samples_folder_is_refused_and_its_files_survive(toy8_run, tmp_path, capfd, flags):
    out, mine = _linked_samples(toy8_run, tmp_path)
    before = tree_digest(out)
    capfd.readouterr()
    rc = train_cli("--preset", "toy8-tiny", "--out", out, "--quiet", "--steps", "3", "--prior-steps", "1", *flags)
    one_error_line(rc, capfd.readouterr().err, "discodiff-train", f"{out / rundir.PROGRESS_DIR} is a symbolic link")
    assert (mine / "step-000001.png").read_bytes() == b"my own picture"
    assert tree_digest(out) == before and (out / rundir.PROGRESS_DIR).is_symlink()


def test_clear_run_never_reaches_through_a_link(toy8_run, tmp_path):
    out, mine = _linked_samples(toy8_run, tmp_path)
    users_model = tmp_path / "my.safetensors"
    users_model.write_bytes(b"my model")
    (out / rundir.MODEL_FILE).unlink()
    (out / rundir.MODEL_FILE).symlink_to(users_model)
    assert all(not p.is_symlink() and mine not in p.parents for p in rundir.own_files(out))
    with pytest.raises(UserError, match="symbolic link"):
        rundir.clear_run(out)
    assert (mine / "step-000001.png").exists() and users_model.read_bytes() == b"my model"


# ---------------------------------------------------------------------------------------------
# --resume names the option it refuses


@pytest.mark.parametrize("option, value", [("--latents", "3"), ("--codebook", "5"), ("--gumbel-tau", "0.5")])
def test_resume_refuses_a_model_change_by_its_option_name(toy8_run, tmp_path, capfd, option, value):
    out = copy_tree(toy8_run, tmp_path / "run")
    before = tree_digest(out)
    capfd.readouterr()
    rc = train_cli("--out", out, "--resume", option, value, "--quiet")
    one_error_line(rc, capfd.readouterr().err, "discodiff-train", f"drop {option}")
    assert tree_digest(out) == before


# ---------------------------------------------------------------------------------------------
# An options file that is no run's: one line, no traceback, no hang


@pytest.mark.parametrize("kind", ["nested", "fifo"])
def test_an_options_file_that_is_no_runs_is_refused_untouched(tmp_path, capfd, kind):
    out = tmp_path / "run"
    out.mkdir()
    options = out / rundir.OPTIONS_FILE
    if kind == "nested":
        options.write_text("[" * 200_000)            # RecursionError in json, not a traceback here
    else:
        os.mkfifo(options)                            # would block a plain read forever
    assert rundir.read_options(out) is None and rundir.classify(out) == rundir.FOREIGN
    capfd.readouterr()
    rc = train_cli("--preset", "toy8-tiny", "--out", out, "--quiet", "--overwrite")
    one_error_line(rc, capfd.readouterr().err, "discodiff-train", "holds no discodiff run")
    assert [p.name for p in out.iterdir()] == [rundir.OPTIONS_FILE]
