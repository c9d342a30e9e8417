"""discodiff-run when the disk fills up, on a real 3 MiB file system and with ENOSPC injected at each of
its write sites: one line naming --out, exit 1, found at the first batch rather than after all the
sampling, and --out left exactly as it was (no temp folder, no partial outputs)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from discodiff.runtime import output
from tests.helpers import call, enospc, fill_to, raise_enospc, run_cli, tree_state, unwritable

ARGS = ("--n", 40, "--batch", 8, "--steps", 3, "--solver", "euler", "--quiet")


def _check(rc: int, err: str, out) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1, (rc, err)
    assert lines[0].startswith("discodiff-run: error:") and "No space left on device" in lines[0], lines[0]
    assert str(out) in lines[0], lines[0]


@pytest.mark.parametrize("free", [2_000, 12_000, 2_500_000])
def test_on_a_real_full_disk(small_fs, toy8_bundle, capsys, free):
    out = small_fs / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    fill_to(small_fs, free)
    before = tree_state(out)
    rc, _, err = call(capsys, run_cli, "--bundle", toy8_bundle, "--out", out, *ARGS)
    if free > 2_000_000:
        assert rc == 0, err
        assert len(list(out.glob("*.npy"))) == 40
        return
    _check(rc, err, out)
    assert tree_state(out) == before


@pytest.mark.parametrize("site", ["sample_png", "grid_png", "npz_rows", "npz_zip", "timing_json", "sample_npy"])
def test_enospc_at_each_write_site(toy8_bundle, shapes_bundle, tmp_path, capsys, monkeypatch, site):
    bundle = toy8_bundle if site == "sample_npy" else shapes_bundle
    out = tmp_path / "out"
    out.mkdir()
    (out / "000001.png").write_bytes(b"an older run's sample")
    before = tree_state(out)
    calls = []
    if site in ("sample_png", "grid_png"):
        hit = enospc(monkeypatch, ".000000." if site == "sample_png" else ".grid.")
    elif site == "npz_rows":
        monkeypatch.setattr(output._NpyPart, "write", raise_enospc)
    elif site == "npz_zip":
        monkeypatch.setattr(zipfile.ZipFile, "write", raise_enospc)
    elif site == "timing_json":
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: raise_enospc() if self.name.startswith("timing")
                            else real(self, *a, **k))
    else:
        real_save = np.save
        monkeypatch.setattr(np, "save", lambda f, *a, **k: calls.append(f) or raise_enospc() if len(calls) == 3
                            else (calls.append(f), real_save(f, *a, **k)))
    rc, _, err = call(capsys, run_cli, "--bundle", bundle, "--out", out, *ARGS)
    if site in ("sample_png", "grid_png"):
        assert hit
    _check(rc, err, out)
    assert tree_state(out) == before
    assert json.dumps(sorted(p.name for p in out.iterdir())) == '["000001.png"]'


@pytest.mark.parametrize("kind", ["proc", "file_as_folder", "read_only_fs"])
def test_an_unwritable_out_fails_before_sampling(toy8_bundle, tmp_path, capsys, request, kind):
    out = unwritable(kind, tmp_path, request.getfixturevalue("small_fs") if kind == "read_only_fs" else None)
    rc, _, err = call(capsys, run_cli, "--bundle", toy8_bundle, "--out", out, "--n", 100000, "--quiet")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc in (1, 2) and len(lines) == 1 and lines[0].startswith("discodiff-run: error:"), lines
    assert not out.exists()
