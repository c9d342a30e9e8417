"""The reference sampler: a sample is a function of its seed only (not of the batch), and the prior's
KV-cache step picks the same tokens as recomputing every position."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from discodiff.runtime import draws as draws_mod
from discodiff.sampling import TorchModel, model_meta, sample

# Batched float32 kernels may round differently for different batch sizes (measured: <= 5e-7 on the
# U-Net, 1e-8 on the MLP, for values of order 1).
ATOL = 1e-5

SEEDS = np.arange(10)


@pytest.fixture(params=["toy8", "shapes"])
def model(request):
    return request.getfixturevalue(f"{request.param}_model")


def test_batch_size_does_not_change_a_sample(model):
    a = sample(model, SEEDS, steps=8, batch=1)
    b = sample(model, SEEDS, steps=8, batch=7)
    assert a.x.shape == (10, *model.cfg.data_shape) and a.x.dtype == np.float32
    assert a.tokens.shape == (10, model.cfg.m)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.seeds, SEEDS)
    np.testing.assert_allclose(a.x, b.x, rtol=0, atol=ATOL)
    assert np.isfinite(a.x).all()
    # samples are not all the same
    assert np.abs(a.x - a.x[:1]).max() > 1e-2


def test_a_sample_does_not_depend_on_the_other_seeds(model):
    full = sample(model, SEEDS, steps=6, batch=10)
    for picks in ([3], [9, 3, 0], [3, 1000, 5]):
        part = sample(model, picks, steps=6, batch=7)
        i = picks.index(3)
        np.testing.assert_array_equal(part.tokens[i], full.tokens[3])
        assert part.labels[i] == full.labels[3]
        np.testing.assert_allclose(part.x[i], full.x[3], rtol=0, atol=ATOL)
    rev = sample(model, SEEDS[::-1], steps=6, batch=4)
    np.testing.assert_allclose(rev.x[::-1], full.x, rtol=0, atol=ATOL)


@pytest.mark.parametrize("solver,churn", [("euler", 5.0), ("heun", 5.0), ("dpm2m", 0.0)])
def test_batch_invariance_for_every_solver_and_churn(model, solver, churn):
    a = sample(model, SEEDS[:6], steps=5, batch=1, solver=solver, churn=churn)
    b = sample(model, SEEDS[:6], steps=5, batch=4, solver=solver, churn=churn)
    np.testing.assert_allclose(a.x, b.x, rtol=0, atol=ATOL)


def test_churn_is_used(model):
    a = sample(model, SEEDS[:4], steps=5, solver="heun")
    b = sample(model, SEEDS[:4], steps=5, solver="heun", churn=5.0)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert np.abs(a.x - b.x).max() > 1e-4


def test_kv_cache_prior_equals_recompute(model):
    a = sample(model, np.arange(40), steps=2, batch=16, recompute_prior=False)
    b = sample(model, np.arange(40), steps=2, batch=16, recompute_prior=True)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.x, b.x)
    assert len(np.unique(a.tokens)) > 1  # the check is not vacuous


@torch.no_grad()
def test_kv_cache_logits_equal_recompute_logits(model):
    prior, cfg = model.prior, model.cfg
    d = draws_mod.draw(np.arange(12), model_meta(cfg))
    tm = TorchModel(model)
    cached = tm.prior_step(12)
    full = tm.prior_step(12, recompute=True)
    rng = np.random.default_rng(0)
    prev = d.labels
    seq = [torch.from_numpy(prev.astype(np.int64))]
    for pos in range(cfg.m):
        la, lb = cached(prev, pos), full(prev, pos)
        assert la.shape == (12, cfg.k)
        np.testing.assert_allclose(la, lb, rtol=0, atol=1e-5)
        # and both equal the causal forward over the whole sequence so far
        ref = prior(torch.stack(seq, 1))[:, pos].numpy()
        np.testing.assert_allclose(la, ref, rtol=0, atol=1e-5)
        prev = rng.integers(cfg.k, size=12).astype(np.int32)  # arbitrary tokens, not just sampled ones
        seq.append(torch.from_numpy(prev.astype(np.int64)))


def test_given_tokens_skip_the_prior_and_reproduce_the_samples(model):
    a = sample(model, SEEDS, steps=4, batch=5)
    b = sample(model, SEEDS, steps=4, batch=3, tokens=a.tokens)
    np.testing.assert_array_equal(b.tokens, a.tokens)
    np.testing.assert_allclose(b.x, a.x, rtol=0, atol=ATOL)
    if model.cfg.m:
        other = (a.tokens + 1) % model.cfg.k
        c = sample(model, SEEDS, steps=4, batch=5, tokens=other)
        assert np.abs(c.x - a.x).max() > 1e-5  # the denoiser does read the tokens


def test_class_labels_come_from_the_seed(shapes_model):
    cfg = shapes_model.cfg
    s = sample(shapes_model, np.arange(30), steps=2, batch=8)
    np.testing.assert_array_equal(s.labels, draws_mod.class_labels(np.arange(30), cfg.num_classes))
    assert set(np.unique(s.labels)) == {0, 1, 2}
    fixed = sample(shapes_model, np.arange(6), steps=2, class_label=1)
    assert (fixed.labels == 1).all()
    # same seed, different class: different prior logits / image
    other = sample(shapes_model, np.arange(6), steps=2, class_label=2)
    assert np.abs(fixed.x - other.x).max() > 1e-5


def test_unconditional_labels_are_the_null_label(toy8_model):
    s = sample(toy8_model, np.arange(5), steps=2)
    assert (s.labels == model_meta(toy8_model.cfg).null_label).all()
