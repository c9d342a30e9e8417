"""Checkpoints whose metadata was edited to disagree with their tensors (or is broken) are refused with
one line naming the first mismatch, by `load_model` and by every command that loads one."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from discodiff import checkpoint as ckpt
from discodiff.errors import UserError
from tests.helpers import call, export_cli, one_error_line


def _rewrite(src, dst, edit):
    """dst = src with its metadata JSON text passed through `edit` (tensors unchanged)."""
    meta = ckpt.read_metadata(src)
    text = edit(meta[ckpt.META_KEY])
    save_file(load_file(str(src)), str(dst), metadata={ckpt.META_KEY: text})
    return dst


def _json_edit(change):
    def edit(text):
        info = json.loads(text)
        change(info)
        return json.dumps(info)
    return edit


CASES = {
    "width_changed": (_json_edit(lambda i: i["model"]["denoiser"].update(width=64)), "shape"),
    "k_changed": (_json_edit(lambda i: i["model"].update(k=9)), "shape"),
    "m_changed": (_json_edit(lambda i: i["model"].update(m=2)), "shape"),
    "m_zero": (_json_edit(lambda i: i["model"].update(m=0)), "does not match its own config"),
    "width_as_string": (_json_edit(lambda i: i["model"]["denoiser"].update(width="32")), "model.denoiser.width"),
    "broken_json": (lambda text: text[:-5], "not valid JSON"),
    "no_model_key": (_json_edit(lambda i: i.pop("model")), "no 'model'"),
    "unknown_field": (_json_edit(lambda i: i["model"].update(colour="blue")), "colour"),
    "heads_not_dividing": (_json_edit(lambda i: i["model"]["prior"].update(heads=3)), "divisible"),
    "nan_sigma_data": (lambda text: text.replace('"sigma_data": 2.0', '"sigma_data": NaN'), "sigma_data"),
    "schema": (_json_edit(lambda i: i.update(schema=9)), "schema"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_edited_metadata_is_refused_with_one_line(toy8_run, tmp_path, capsys, case):
    edit, words = CASES[case]
    bad = _rewrite(toy8_run / "model.safetensors", tmp_path / "model.safetensors", edit)
    with pytest.raises(UserError) as exc:
        ckpt.load_model(bad)
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    out = tmp_path / "bundle"
    rc, _, err = call(capsys, export_cli, "--checkpoint", bad, "--out", out, "--quiet")
    one_error_line(rc, err, "discodiff-export", words)
    assert not out.exists()


def test_control_the_unedited_rewrite_loads(toy8_run, tmp_path):
    same = _rewrite(toy8_run / "model.safetensors", tmp_path / "model.safetensors", lambda text: text)
    model, info = ckpt.load_model(same)
    assert info["model"]["k"] == model.cfg.k == 8


def test_a_truncated_file_is_refused(toy8_run, tmp_path):
    data = (toy8_run / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged|valid safetensors"):
        ckpt.load_model(bad)
