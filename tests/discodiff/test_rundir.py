"""discodiff-train and the run directory: a folder that holds no run is never touched, --overwrite
removes only what a run wrote, and a run that failed before its first save does not block the next."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import copy_tree, train_cli as train, tree_digest


# ---------------------------------------------------------------------------------------------
# Never delete what the user had


def _users_folder(path: Path) -> Path:
    """A folder of the user's that happens to hold names a run writes (samples/, samples.png, loss.png)."""
    (path / "samples").mkdir(parents=True)
    (path / "samples" / "holiday.png").write_bytes(b"the user's picture")
    (path / "samples.png").write_bytes(b"the user's own samples.png")
    (path / "loss.png").write_bytes(b"the user's own loss.png")
    (path / "notes.txt").write_text("keep me")
    return path


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]])
def test_a_folder_that_holds_no_run_is_never_touched(tmp_path, capfd, flags):
    out = _users_folder(tmp_path / "photos")
    before = tree_digest(out)
    capfd.readouterr()
    assert train("--preset", "toy8-tiny", "--out", out, "--quiet", *flags) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err
    assert tree_digest(out) == before


def test_overwrite_removes_only_what_the_run_wrote(toy8_run, tmp_path):
    out = copy_tree(toy8_run, tmp_path / "run")
    (out / "my_notes.txt").write_text("keep me")
    (out / "samples").mkdir(exist_ok=True)
    (out / "samples" / "mine.png").write_bytes(b"not a progress grid")
    assert train("--preset", "toy8-tiny", "--out", out, "--quiet", "--overwrite", "--steps", "2",
                 "--prior-steps", "1") == 0
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert (out / "samples" / "mine.png").read_bytes() == b"not a progress grid"
    assert (out / "model.safetensors").is_file()


def test_a_run_that_failed_before_its_first_save_does_not_block_the_next(tmp_path):
    from discodiff import rundir

    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.OPTIONS_FILE).write_text(json.dumps({**rundir.marker(), "name": "toy8-tiny"}))
    (out / rundir.METRICS_FILE).write_text('{"stage": 1, "step": 5, "loss": 1.0}\n')
    assert rundir.classify(out) == rundir.STALE
    assert train("--preset", "toy8-tiny", "--out", out, "--quiet", "--steps", "2", "--prior-steps", "1") == 0
    assert rundir.classify(out) == rundir.RUN
