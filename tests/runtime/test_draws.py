"""Per-sample random draws and inverse-CDF token picking (runtime.draws, runtime.tokens)."""
from __future__ import annotations

import numpy as np
import pytest

from discodiff.runtime import draws
from discodiff.runtime.contract import ModelMeta
from discodiff.runtime.tokens import categorical, sample_tokens

SHAPE = (3, 4, 4)


def _draw(seeds, shape, m, num_classes, class_label=None):
    return draws.draw(seeds, ModelMeta(tuple(shape), m, 8, num_classes), class_label)


def _eq(a: draws.Draws, b: draws.Draws):
    for f in ("seeds", "labels", "u", "noise"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f


def test_same_seed_same_draw():
    a = _draw([5, 6, 7], SHAPE, m=2, num_classes=3)
    b = _draw([5, 6, 7], SHAPE, m=2, num_classes=3)
    _eq(a, b)
    assert a.noise.dtype == np.float32 and a.noise.shape == (3, *SHAPE)
    assert a.u.dtype == np.float64 and a.u.shape == (3, 2)
    assert a.labels.dtype == np.int32 and a.seeds.dtype == np.int64
    np.testing.assert_array_equal(draws.churn_noise(np.array([5, 6]), 3, SHAPE),
                                  draws.churn_noise(np.array([5, 6]), 3, SHAPE))


def test_a_sample_does_not_depend_on_the_rest_of_the_batch():
    alone = _draw([3], SHAPE, m=2, num_classes=3)
    batch = _draw([10, 3, 99, 0], SHAPE, m=2, num_classes=3)
    _eq(alone, batch.take(slice(1, 2)))
    _eq(_draw([99, 3], SHAPE, 2, 3).take(np.array([1])), alone)
    np.testing.assert_array_equal(draws.churn_noise(np.array([3]), 2, SHAPE)[0],
                                  draws.churn_noise(np.array([7, 3, 1]), 2, SHAPE)[1])


def test_different_seeds_streams_and_steps_differ():
    d = _draw([0, 1], SHAPE, m=2, num_classes=0)
    assert not np.array_equal(d.noise[0], d.noise[1])
    assert not np.array_equal(d.u[0], d.u[1])
    s = np.array([0])
    c0, c1 = draws.churn_noise(s, 0, SHAPE), draws.churn_noise(s, 1, SHAPE)
    assert not np.array_equal(c0, c1)
    assert not np.array_equal(c0, d.noise[:1])


def test_distributions():
    seeds = np.arange(3000)
    labels = draws.class_labels(seeds, 3)
    counts = np.bincount(labels, minlength=3)
    assert labels.min() >= 0 and labels.max() <= 2
    assert (np.abs(counts - 1000) < 120).all(), counts
    u = draws.prior_uniforms(seeds, 2)
    assert (u >= 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.02
    z = draws.initial_noise(seeds[:500], (8,))
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_labels_unconditional_and_fixed_class():
    assert (_draw([1, 2, 3], (2,), 1, num_classes=0).labels == 0).all()
    assert (_draw([1, 2, 3], (2,), 1, num_classes=5, class_label=4).labels == 4).all()
    d = _draw([1, 2, 3], (2,), 0, num_classes=0)
    assert d.u.shape == (3, 0)


@pytest.mark.parametrize("bad", [[-1], [3, -2], np.array([0, -5])])
def test_negative_seeds_are_refused(bad):
    with pytest.raises(ValueError):
        _draw(bad, (2,), 1, 0)


# ---------------------------------------------------------------------------------------------
# categorical


P = np.array([0.2, 0.3, 0.5])


@pytest.mark.parametrize("u,code", [(0.0, 0), (0.1, 0), (0.2 - 1e-9, 0), (0.2 + 1e-9, 1), (0.35, 1),
                                    (0.5 - 1e-9, 1), (0.5 + 1e-9, 2), (0.9, 2), (1 - 1e-12, 2)])
def test_categorical_inverse_cdf(u, code):
    logits = np.log(P)[None] + 3.7  # a constant shift changes nothing
    assert categorical(logits, np.array([u]))[0] == code


def test_categorical_frequencies_on_a_uniform_grid():
    n = 10_000
    u = (np.arange(n) + 0.5) / n
    p = np.array([0.05, 0.6, 0.1, 0.25])
    codes = categorical(np.tile(np.log(p), (n, 1)), u)
    assert codes.dtype == np.int32
    np.testing.assert_allclose(np.bincount(codes, minlength=4) / n, p, atol=2 / n)


def test_categorical_temperature():
    n = 10_000
    u = (np.arange(n) + 0.5) / n
    logits = np.tile(np.log(P), (n, 1))
    hot = categorical(logits, u, temperature=2.0)
    q = np.sqrt(P) / np.sqrt(P).sum()  # p^(1/T), renormalised
    np.testing.assert_allclose(np.bincount(hot, minlength=3) / n, q, atol=2 / n)
    # temperature 0: the arg-max whatever u is
    rows = np.array([[0.1, 2.0, -1.0], [5.0, 4.9, 0.0], [-3.0, -2.0, -1.0]])
    for uu in (0.0, 0.5, 0.999):
        np.testing.assert_array_equal(categorical(rows, np.full(3, uu), temperature=0.0), [1, 0, 2])


def test_categorical_top_k():
    n = 10_000
    u = (np.arange(n) + 0.5) / n
    p = np.array([0.1, 0.3, 0.05, 0.4, 0.15])
    logits = np.tile(np.log(p), (n, 1))
    codes = categorical(logits, u, top_k=2)
    assert set(np.unique(codes)) == {1, 3}
    np.testing.assert_allclose(np.bincount(codes, minlength=5) / n, [0, 3 / 7, 0, 4 / 7, 0], atol=2 / n)
    codes3 = categorical(logits, u, top_k=3)
    assert set(np.unique(codes3)) == {1, 3, 4}
    # top_k = 1 is the arg-max; top_k >= k changes nothing
    assert (categorical(logits, u, top_k=1) == 3).all()
    np.testing.assert_array_equal(categorical(logits, u, top_k=5), categorical(logits, u))


def test_categorical_is_per_row():
    logits = np.log(np.array([[0.9, 0.1], [0.1, 0.9]]))
    np.testing.assert_array_equal(categorical(logits, np.array([0.5, 0.5])), [0, 1])


def test_sample_tokens_feeds_the_label_then_the_previous_token():
    k = 4
    seen = []

    def step(prev, pos):
        seen.append((prev.copy(), pos))
        logits = np.full((len(prev), k), -30.0)
        logits[np.arange(len(prev)), (prev + 1) % k] = 30.0  # next token = prev + 1 (mod k)
        return logits

    labels = np.array([0, 2], np.int32)
    tok = sample_tokens(step, labels, np.full((2, 3), 0.5))
    np.testing.assert_array_equal(tok, [[1, 2, 3], [3, 0, 1]])
    assert tok.dtype == np.int32
    assert [p for _, p in seen] == [0, 1, 2]
    np.testing.assert_array_equal(seen[0][0], labels)
    np.testing.assert_array_equal(seen[2][0], tok[:, 1])
