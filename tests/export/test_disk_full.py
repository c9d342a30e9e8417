"""discodiff-export when the disk fills up, on a real 3 MiB file system and with ENOSPC injected at its
write sites: one line naming the bundle, exit 1, no bundle and no temp folder left, an existing bundle
kept as it was."""
from __future__ import annotations

import tempfile

import pytest
import torch

from tests.helpers import call, copy_tree, enospc, export_cli, fill_to, raise_enospc, tree_state, unwritable


def _check(rc: int, err: str, out) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1, (rc, err)
    assert lines[0].startswith("discodiff-export: error:") and "No space left on device" in lines[0], lines[0]
    assert str(out.parent) in lines[0], lines[0]   # the bundle, or the folder its temp copy is made in


@pytest.mark.parametrize("free", [20_000, 150_000, 6_000_000])
def test_on_a_real_full_disk(small_fs, toy8_run, capsys, free):
    fill_to(small_fs, free)
    out = small_fs / "bundle"
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out,
                      "--max-batch", 8, "--quiet")
    if free > 3_000_000:               # control: the whole file system free is enough
        assert rc == 0, err
        return
    _check(rc, err, out)
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]


@pytest.mark.parametrize("site", ["temp_folder", "onnx_file", "manifest"])
def test_enospc_at_each_write_site_keeps_the_old_bundle(toy8_bundle, toy8_run, tmp_path, capsys, monkeypatch, site):
    out = copy_tree(toy8_bundle, tmp_path / "bundle")
    before = tree_state(tmp_path)
    if site == "temp_folder":
        monkeypatch.setattr(tempfile, "mkdtemp", raise_enospc)
    elif site == "onnx_file":
        monkeypatch.setattr(torch.onnx, "export", raise_enospc)
    else:
        hit = enospc(monkeypatch, ".manifest.")
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out, "--max-batch", 8,
                      "--quiet")
    if site == "manifest":
        assert hit
    _check(rc, err, out)
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("kind", ["proc", "file_as_folder", "read_only_fs"])
def test_an_unwritable_out_fails_before_exporting(toy8_run, tmp_path, capsys, request, kind):
    out = unwritable(kind, tmp_path, request.getfixturevalue("small_fs") if kind == "read_only_fs" else None)
    rc, _, err = call(capsys, export_cli, "--checkpoint", toy8_run / "model.safetensors", "--out", out, "--quiet")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc in (1, 2) and len(lines) == 1 and lines[0].startswith("discodiff-export: error:"), lines
    assert "exporting" not in err and not out.exists()
