"""The served model's request handler, on plain request objects (no server): settings grouped per batch,
one error per bad request while the others are answered (every parameter bounded as discodiff-run bounds
it, the work of one item bounded by max_calls), samples equal to discodiff-run's, a non-finite sample failed
by its seed, and a batch cut off when the server stops."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.limits import MAX_GUIDANCE, MAX_NFE, MAX_SEED, MAX_STEPS, MAX_TEMPERATURE
from discodiff.runtime.manifest import load_manifest
from discodiff.runtime.serving.handler import STOPPING, SampleHandler
from tests.helpers import call, run_cli


@dataclass
class Req:
    data: dict
    parameters: dict = field(default_factory=dict)


def seeds(*s):
    return {"seed": np.array(s, np.int64).reshape(-1, 1)}


class CallCap:
    """A real bundle model that fails a batch running more than `cap` denoiser calls, so that a request whose
    bound is missing fails this test at once instead of holding it for hours."""

    def __init__(self, model, cap: int = 1000):
        self.inner, self.cap, self.calls = model, cap, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prior_step(self, *args, **kw):      # the start of every batch (m > 0)
        self.calls = 0
        return self.inner.prior_step(*args, **kw)

    def denoise(self, *args):
        self.calls += 1
        assert self.calls <= self.cap, f"a batch ran more than {self.cap} denoiser calls: its bound is missing"
        return self.inner.denoise(*args)


@pytest.fixture(scope="module")
def handler(tiny):
    b = tiny.bundle("shapes")
    with Pipeline.open(b, backend="ort") as o:
        yield SampleHandler(Pipeline(CallCap(o.model), sampling=load_manifest(b).sampling), max_batch=4)


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
    ({"nfe": 6, "solver": "heun"}, None, "odd"),
    ({"guidance": float("nan")}, None, "guidance"),
    ({"temperature": -1}, None, "temperature"),
    ({"top_k": 1.5}, None, "top_k"),
    ({"steps": True}, None, "steps"),
    ({"solver": 3}, None, "solver"),
    ({"nfes": 8}, None, "unknown parameter"),
    # bounds, as discodiff-run's (10**7 steps held the only instance for hours)
    ({"steps": 10**7}, None, f"steps must be an integer in 1..{MAX_STEPS}"),
    ({"steps": MAX_STEPS + 1}, None, "steps"),
    ({"nfe": MAX_NFE + 1}, None, f"nfe must be an integer in 1..{MAX_NFE}"),
    ({"guidance": 1e308}, None, f"guidance must be a finite number in 0..{MAX_GUIDANCE:g}"),
    ({"temperature": MAX_TEMPERATURE * 2}, None, "temperature"),
    ({"top_k": 5}, None, "top_k must be an integer in 0..4"),        # the model has k = 4 codes
    ({"steps": 201}, None, "401 denoiser calls"),                   # heun: 2 * 201 - 1 > max_calls 400
    ({"nfe": 401, "solver": "euler"}, None, "--max-calls"),
    ({}, {"seed": np.array([[MAX_SEED]], np.int64)}, "seed"),
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
    with Pipeline.open(b, backend="ort") as o:
        h = SampleHandler(Pipeline(o.model, sampling=load_manifest(b).sampling), max_batch=8)
        out = h([Req(seeds(1, 2, 3), {"steps": 4})])[0]
    assert out["error"].ravel().tolist() == [b""] * 3
    assert out["sample"].dtype == np.float32 and out["sample"].shape == (3, 2)
    assert out["tokens"].shape == (3, 1)


def test_the_largest_allowed_settings_are_answered(handler):
    top = {"nfe": 400, "solver": "euler", "guidance": MAX_GUIDANCE, "top_k": 4, "temperature": MAX_TEMPERATURE}
    out = handler([Req(seeds(1), top), Req(seeds(MAX_SEED - 1), {"steps": 2, "solver": "euler"})])
    assert [o["error"][0, 0] for o in out] == [b"", b""]


class OneRowNaN:
    """A real bundle model whose denoiser output is NaN for row `row` of every call (a damaged graph)."""

    def __init__(self, model, row: int):
        self.inner, self.row = model, row

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def denoise(self, x, sigma, tokens, labels):
        out = np.array(self.inner.denoise(x, sigma, tokens, labels))
        out[self.row] = np.nan
        return out


@pytest.mark.parametrize("bundle, shape", [("shapes", (8, 8, 3)), ("toy8", (2,))])
def test_a_non_finite_sample_fails_its_own_item_naming_its_seed(tiny, bundle, shape):
    b = tiny.bundle(bundle)
    with Pipeline.open(b, backend="ort") as o:
        h = SampleHandler(Pipeline(OneRowNaN(o.model, row=1), sampling=load_manifest(b).sampling), max_batch=4)
        out = h([Req(seeds(30, 31), {"steps": 3, "solver": "euler"}), Req(seeds(32), {"steps": 3, "solver": "euler"})])
    # 31 is row 1 of the one group [30, 31, 32]; the other items are answered
    errors = [e.decode() for o in out for e in o["error"].ravel()]
    assert errors[0] == "" and errors[2] == "", errors
    assert "seed 31" in errors[1] and "not finite" in errors[1] and "\n" not in errors[1], errors[1]
    assert out[0]["sample"].shape == (2, *shape) and (out[0]["sample"][1] == 0).all()   # no NaN pixels sent
    assert np.isfinite(out[0]["sample"].astype(np.float64)).all()


class StopAfter:
    """A real bundle model that sets the server's stopping event at its `n`-th denoiser call."""

    def __init__(self, model, n: int, event: threading.Event):
        self.inner, self.n, self.event, self.calls = model, n, event, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def denoise(self, *args):
        self.calls += 1
        if self.calls == self.n:
            self.event.set()
        return self.inner.denoise(*args)


def test_a_stopping_server_cuts_its_batch_off_at_the_next_step(tiny):
    b = tiny.bundle("shapes")
    stopping = threading.Event()
    with Pipeline.open(b, backend="ort") as o:
        model = StopAfter(o.model, 5, stopping)
        h = SampleHandler(Pipeline(model, sampling=load_manifest(b).sampling), max_batch=4, max_calls=20_000, stopping=stopping)
        out = h([Req(seeds(1, 2), {"steps": 5000}), Req(seeds(3), {"steps": 1, "solver": "nope"})])
    assert model.calls <= 6             # the heun step in progress (2 calls) ends it, not the 9999 asked for
    assert out[0]["error"].ravel().tolist() == [STOPPING.encode()] * 2 and b"nope" in out[1]["error"][0, 0]
    assert h.cut_off == 2 and h.busy == 0
