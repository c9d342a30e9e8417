"""The served model's request handler, on plain request objects (no server): settings grouped per batch,
one error per bad request while the others are answered, and samples equal to discodiff-run's."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

from discodiff.runtime.bundle import open_bundle
from discodiff.runtime.manifest import load_manifest
from discodiff.runtime.serving.handler import SampleHandler
from tests.helpers import call, run_cli


@dataclass
class Req:
    data: dict
    parameters: dict = field(default_factory=dict)


def seeds(*s):
    return {"seed": np.array(s, np.int64).reshape(-1, 1)}


@pytest.fixture(scope="module")
def handler(tiny):
    b = tiny.bundle("shapes")
    with open_bundle(b, "ort") as o:
        yield SampleHandler(o.model, load_manifest(b).sampling, max_batch=4)


def test_a_batch_of_mixed_requests(handler):
    reqs = [Req(seeds(1, 2), {"nfe": 5, "solver": "euler"}), Req(seeds(3)), Req(seeds(4), {"solver": "rk4"}),
            Req({"seed": np.array([[5]], np.int64), "class_label": np.array([[2]], np.int32)}, {"nfe": 5, "solver": "euler"}),
            Req({"class_label": np.array([[1]], np.int32)})]
    out = handler(reqs)
    assert [o["error"].ravel().tolist() for o in out] == [[b"", b""], [b""], [out[2]["error"][0, 0]], [b""], [out[4]["error"][0, 0]]]
    assert b"rk4" in out[2]["error"][0, 0] and b"seed" in out[4]["error"][0, 0]
    assert out[0]["sample"].shape == (2, 8, 8, 3) and out[0]["sample"].dtype == np.uint8
    assert out[0]["tokens"].shape == (2, 2) and out[0]["tokens"].dtype == np.int32
    # a sample does not depend on what it was batched with
    alone = handler([Req(seeds(2), {"nfe": 5, "solver": "euler"})])[0]
    np.testing.assert_array_equal(alone["sample"][0], out[0]["sample"][1])
    np.testing.assert_array_equal(alone["tokens"][0], out[0]["tokens"][1])
    # settings reach the sampler: the same seed with other settings differs
    other = handler([Req(seeds(1), {"nfe": 9})])[0]
    assert np.abs(other["sample"][0].astype(int) - out[0]["sample"][0].astype(int)).max() > 0


@pytest.mark.parametrize("params, data, words", [
    ({"nfe": 6, "schedule": "fitted"}, None, "no schedule fitted"),
    ({"nfe": 6}, None, "odd"),
    ({"guidance": float("nan")}, None, "guidance"),
    ({"temperature": -1}, None, "temperature"),
    ({"top_k": 1.5}, None, "top_k"),
    ({"steps": True}, None, "steps"),
    ({"solver": 3}, None, "solver"),
    ({"nfes": 8}, None, "unknown parameter"),
    ({}, {"seed": np.array([[-1]], np.int64)}, "seed"),
    ({}, {"seed": np.array([[1]], np.int32)}, "int64"),
    ({}, {"seed": np.array([[1]], np.int64), "class_label": np.array([[3]], np.int32)}, "class_label"),
    ({}, {"seed": np.array([[1]], np.int64), "class_label": np.array([[-2]], np.int32)}, "class_label"),
])
def test_each_bad_request_gets_one_line(handler, params, data, words):
    ok = Req(seeds(7))
    out = handler([ok, Req(data or seeds(8), params)])
    assert out[0]["error"][0, 0] == b""
    msg = out[1]["error"][0, 0].decode()
    assert words in msg and "\n" not in msg, msg


def test_samples_equal_discodiff_runs_png_pixels(tiny, handler, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = call(capsys, run_cli, "--bundle", tiny.bundle("shapes"), "--out", out, "--n", 3, "--seed", 40,
                      "--steps", 4, "--quiet")
    assert rc == 0, err
    served = handler([Req(seeds(40, 41, 42), {"steps": 4})])[0]
    for i, s in enumerate((40, 41, 42)):
        png = cv2.cvtColor(cv2.imread(str(out / f"{s:06d}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(served["sample"][i], png)
    with np.load(out / "samples.npz") as f:
        np.testing.assert_array_equal(served["tokens"], f["tokens"])


def test_vector_models_return_float_samples_and_no_tokens_when_plain(tiny):
    b = tiny.bundle("toy8")
    with open_bundle(b, "ort") as o:
        h = SampleHandler(o.model, load_manifest(b).sampling, max_batch=8)
        out = h([Req(seeds(1, 2, 3), {"steps": 3})])[0]
    assert out["sample"].dtype == np.float32 and out["sample"].shape == (3, 2)
    assert out["tokens"].shape == (3, 1)
