"""The quality benchmark's measures against cases whose answer is known exactly."""
import numpy as np
import pytest

from discodiff.benchmarks import quality_metrics as qm


def test_w2_is_zero_for_a_permutation_and_the_shift_for_a_translation():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 2))
    assert qm.w2(a, a[rng.permutation(300)]) == pytest.approx(0.0, abs=1e-12)
    v = np.array([0.3, -0.4])
    assert qm.w2(a, a + v) == pytest.approx(0.5, rel=1e-9)  # translation: identity assignment is optimal


def test_w2_refuses_unequal_sizes():
    with pytest.raises(ValueError):
        qm.w2(np.zeros((3, 2)), np.zeros((4, 2)))


def test_excess_removes_the_floor_in_quadrature():
    assert qm.excess(0.5, 0.3) == pytest.approx(0.4)
    assert qm.excess(0.2, 0.3) == 0.0


def test_off_mode_and_mode_tv():
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.array([[0.1, 0.0], [5.0, 0.0], [10.0, 0.2], [9.9, 0.0]])
    assert qm.off_mode_share(x, centres, 0.6) == 0.25
    # nearest: 0, 0 (5.0 ties -> first), 1, 1 -> histogram [0.5, 0.5]: uniform
    assert qm.mode_tv(x, centres) == pytest.approx(0.0)
    assert qm.mode_tv(x[:1], centres) == pytest.approx(0.5)


def test_purity_and_code_shares():
    tokens = np.array([0, 0, 0, 1, 1, 2])
    comp = np.array([5, 5, 4, 3, 3, 1])
    assert qm.purity(tokens, comp) == pytest.approx(5 / 6)
    assert qm.code_shares(tokens, 4) == pytest.approx([0.5, 2 / 6, 1 / 6, 0.0])


def test_curvature_of_a_line_is_zero_and_of_a_circle_is_one_over_radius():
    t = np.linspace(0, 1, 50)
    line = np.stack([t, 2 * t], -1)[:, None, :]                       # [T+1, n=1, d=2]
    assert np.allclose(qm.curvature(line), 0.0, atol=1e-9)
    r, th = 2.0, np.linspace(0, np.pi, 400)
    circle = np.stack([r * np.cos(th), r * np.sin(th)], -1)[:, None, :]
    assert np.allclose(qm.curvature(circle), 1 / r, rtol=1e-3)


def test_nmi_perfect_and_independent():
    a = np.repeat(np.arange(4), 256)
    assert qm.nmi(a, (a + 1) % 4) == pytest.approx(1.0)               # a relabelling carries all information
    b = np.tile(np.arange(4), 256)
    assert qm.nmi(a, b) == pytest.approx(0.0, abs=1e-12)              # independent by construction


def test_histogram_tv():
    assert qm.histogram_tv(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), 4) == pytest.approx(0.5)


def test_frechet_is_zero_for_the_same_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 4))
    assert abs(qm.frechet(a, a)) < 1e-8
    assert qm.frechet(a, a + np.array([1.0, 0, 0, 0])) == pytest.approx(1.0, abs=1e-6)
    b = rng.standard_normal((2000, 4)) * 2.0      # same mean, std 2: Tr(1 + 4 - 2*2) = 1 per dim
    assert qm.frechet(a, b) == pytest.approx(4.0, rel=0.1)
