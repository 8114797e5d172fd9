"""pass@k against exact combinatorics."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from ttc_jax.scaling.passk import mean_pass_at_k, pass_at_k


def exact(n, c, k):
    return 1 - Fraction(comb(n - c, k), comb(n, k))


def test_all_small_cases_match_exact_combinatorics():
    cases = [(n, c, k) for n in range(1, 16) for c in range(n + 1) for k in range(1, n + 1)]
    n, c, k = (np.array(v) for v in zip(*cases))
    got = pass_at_k(n, c, k)
    want = np.array([float(exact(*t)) for t in cases])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


def test_scalar_in_scalar_out_and_edges():
    assert isinstance(pass_at_k(10, 3, 2), float)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 4, 2) == 1.0  # every pair contains a correct sample
    assert pass_at_k(7, 7, 7) == 1.0


def test_tiny_probabilities_keep_relative_precision():
    n, c, k = 10**6, 2, 3
    want = exact(n, c, k)
    assert pass_at_k(n, c, k) == pytest.approx(float(want), rel=1e-12)


def test_large_n_vectorised_matches_exact():
    n = np.array([200, 500, 1000])
    c = np.array([17, 1, 400])
    k = np.array([10, 100, 3])
    want = [float(exact(*t)) for t in zip(n.tolist(), c.tolist(), k.tolist())]
    np.testing.assert_allclose(pass_at_k(n, c, k), want, rtol=1e-12)


def test_broadcasting():
    got = pass_at_k(np.array([10, 20]), np.array([1, 2]), np.array([[1], [5]]))
    assert got.shape == (2, 2)
    assert got[1, 1] == pytest.approx(float(exact(20, 2, 5)))


def test_mean_pass_at_k_is_the_coverage_curve():
    n, c = [10, 10, 4], [1, 5, 0]
    got = mean_pass_at_k(n, c, [1, 2, 4])
    want = [np.mean([float(exact(a, b, k)) for a, b in zip(n, c)]) for k in (1, 2, 4)]
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize("n,c,k,match", [
    (3, 1, 4, "k=4 .*must be <= n"),  # k > n is an error, not 1.0
    (3, 4, 1, "c=4"),
    (3, -1, 1, "c=-1"),
    (3, 1, 0, "k=0"),
    (0, 0, 1, "n=0"),
    (2.5, 1, 1, "n=2.5"),
    (np.array([3, 4]), np.array([1, 2, 3]), 1, "broadcast"),
    ("10", 1, 1, "n="),
])
def test_bad_input(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_k_greater_than_n_inside_an_array_is_reported():
    with pytest.raises(ValueError, match=r"n=5, c=1, k=6"):
        pass_at_k([10, 5], [1, 1], [6, 6])
