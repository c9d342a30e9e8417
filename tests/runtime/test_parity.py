"""The one sampling core over ONNX Runtime graphs against the same core over the torch networks: the
same draws give the same tokens and samples within 1e-4, for every solver and option."""
from __future__ import annotations

import numpy as np
import pytest

from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.draws import draw
from discodiff.runtime.sampling import prior_tokens, sample_batch
from discodiff.runtime.solvers import SOLVERS
from discodiff.sampling import TorchModel

STEPS = 6

CASES = [(solver, {}) for solver in SOLVERS] + [
    ("heun", {"guidance": 2.0}),
    ("dpm2m", {"guidance": 2.0}),
    ("heun", {"churn": 10.0}),
    ("euler", {"churn": 10.0}),
    ("heun", {"temperature": 0.5, "top_k": 2}),
]


@pytest.mark.parametrize("name", ["toy8", "shapes"])
@pytest.mark.parametrize("solver, opts", CASES, ids=[f"{s}-{'-'.join(f'{k}{v}' for k, v in o.items()) or 'plain'}"
                                                      for s, o in CASES])
def test_ort_equals_torch_through_the_same_core(name, solver, opts, tiny):
    model = tiny.model(name)
    tm = TorchModel(model)
    seeds = np.arange(40, 45)
    d = draw(seeds, tm.meta)
    with Pipeline.open(tiny.bundle(name), backend="ort", precision="fp32") as o:
        assert o.model.meta == tm.meta        # the manifest and the checkpoint describe the same model
        x, tok = sample_batch(o.model, d, steps=STEPS, solver=solver, **opts)
    ref_x, ref_tok = sample_batch(tm, d, steps=STEPS, solver=solver, **opts)
    assert x.shape == ref_x.shape == (len(seeds), *tm.meta.data_shape) and x.dtype == np.float32
    np.testing.assert_array_equal(tok, ref_tok)
    assert tok.shape == (len(seeds), tm.meta.m) and tok.dtype == np.int32
    assert np.isfinite(x).all()
    assert float(np.max(np.abs(x - ref_x))) <= 1e-4, float(np.max(np.abs(x - ref_x)))


@pytest.mark.parametrize("name", ["toy8", "shapes"])
def test_options_change_the_samples(name, tiny):
    """Control for the parity test: solver, guidance and churn really reach the runtime."""
    with Pipeline.open(tiny.bundle(name), backend="ort", precision="fp32") as o:
        d = draw(np.arange(3), o.model.meta)
        base, tok = sample_batch(o.model, d, steps=STEPS)
        for kw in ({"solver": "euler"}, {"guidance": 2.0}, {"churn": 10.0}, {"solver": "ipndm"}):
            x, _ = sample_batch(o.model, d, steps=STEPS, tokens=tok, **kw)
            assert np.max(np.abs(x - base)) > 1e-4, kw


def test_prior_recompute_tokens_equal_cache_and_torch(tiny):
    bundle, tm = tiny.bundle("shapes"), TorchModel(tiny.model("shapes"))
    d = draw(np.arange(8), tm.meta)
    with Pipeline.open(bundle, backend="ort", prior="cache") as o:
        cache = prior_tokens(o.model, d)
    with Pipeline.open(bundle, backend="ort", prior="recompute") as o:
        recompute = prior_tokens(o.model, d, recompute=True)
    ref = prior_tokens(tm, d)
    np.testing.assert_array_equal(cache, recompute)
    np.testing.assert_array_equal(cache, ref)
    np.testing.assert_array_equal(prior_tokens(tm, d, recompute=True), ref)
    assert len(np.unique(ref)) > 1
