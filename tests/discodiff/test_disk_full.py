"""discodiff-train when the disk fills up: on a real 3 MiB file system at several fill levels, and with
ENOSPC injected at each of its write sites. Every failure is one line naming the path, exit 1; nothing
half-written is left (no temp files, every file present is whole); the user's files are untouched; and
the run can be continued (--resume) or restarted without --overwrite."""
from __future__ import annotations

import json

import pytest

from discodiff import rundir
from discodiff.checkpoint import load_state, read_info
from tests.helpers import enospc, fill_to, train_cli, unwritable

ARGS = ("--preset", "toy8-tiny", "--quiet")


def _check_failure(rc: int, err: str, where) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1, (rc, err)
    assert lines[0].startswith("discodiff-train: error:") and "No space left on device" in lines[0], lines[0]
    assert str(where) in lines[0], lines[0]


def _whole(out) -> None:
    """No temp files; every run file present parses."""
    assert not [p.name for p in out.rglob(".*")], sorted(p.name for p in out.rglob(".*"))
    if (out / rundir.OPTIONS_FILE).exists():
        json.loads((out / rundir.OPTIONS_FILE).read_text())
    if (out / rundir.STATE_FILE).exists():
        load_state(out / rundir.STATE_FILE)
    if (out / rundir.MODEL_FILE).exists():
        read_info(out / rundir.MODEL_FILE)


def _recovers(out) -> None:
    """Continue where it stopped, or start again, with no --overwrite needed."""
    kind = rundir.classify(out)
    assert kind != rundir.FOREIGN
    args = ("--out", out, "--resume", "--quiet") if (out / rundir.STATE_FILE).exists() else (*ARGS, "--out", out)
    assert train_cli(*args) == 0
    assert (out / rundir.MODEL_FILE).is_file()


@pytest.mark.parametrize("free", [1_000, 100_000, 300_000, 2_000_000])
def test_on_a_real_full_disk(small_fs, capsys, free):
    (small_fs / "mine.txt").write_text("the user's")
    fill_to(small_fs, free)
    out = small_fs / "run"
    capsys.readouterr()
    rc = train_cli(*ARGS, "--out", out)
    err = capsys.readouterr().err
    assert (small_fs / "mine.txt").read_text() == "the user's"
    if free >= 2_000_000:
        assert rc == 0, err            # control: with room the same run completes
        return
    _check_failure(rc, err, out)
    if out.exists():
        _whole(out)
    (small_fs / "filler").unlink()     # space freed: the next attempt succeeds
    _recovers(out)


SITES = {   # where: the file name part whose write fails
    "options": ".training_options.", "metrics_reset": ".metrics.", "metrics_append": "metrics.jsonl",
    "state": ".train_state.", "model": ".model.", "loss_png": ".loss.", "samples_png": ".samples.",
}


@pytest.mark.parametrize("site", list(SITES))
def test_enospc_at_each_write_site(tmp_path, capsys, monkeypatch, site):
    out = tmp_path / "run"
    hit = enospc(monkeypatch, SITES[site])
    capsys.readouterr()
    rc = train_cli(*ARGS, "--out", out)
    assert hit, f"the {site} write was never reached"
    _check_failure(rc, capsys.readouterr().err, out)
    _whole(out)
    monkeypatch.undo()
    _recovers(out)


@pytest.mark.parametrize("kind", ["proc", "file_as_folder", "read_only_fs"])
def test_an_unwritable_out_fails_before_training(tmp_path, capsys, request, kind):
    out = unwritable(kind, tmp_path, request.getfixturevalue("small_fs") if kind == "read_only_fs" else None)
    capsys.readouterr()
    rc = train_cli(*ARGS, "--out", out, "--steps", 100000)   # it would take minutes if it started training
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc in (1, 2) and len(lines) == 1 and lines[0].startswith("discodiff-train: error:"), lines
    assert not out.exists()
