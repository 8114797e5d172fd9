"""Power-law fits recover known parameters from noisy synthetic data; bad input fails clearly."""

from __future__ import annotations

import numpy as np
import pytest

from ttc_jax.scaling.fits import fit_exp_power_law, fit_power_law


def test_power_law_recovers_parameters_with_intervals():
    rng = np.random.default_rng(1)
    C = np.geomspace(1e15, 1e22, 40)
    y = 3.0 * C ** -0.07 * np.exp(rng.normal(0, 0.02, C.size))
    f = fit_power_law(C, y, n_bootstrap=400)
    assert f.b == pytest.approx(-0.07, abs=0.004)
    assert f.a == pytest.approx(3.0, rel=0.15)
    lo, hi = f.intervals["b"]
    assert lo < -0.07 < hi and hi - lo < 0.01
    assert f.intervals["a"][0] < 3.0 < f.intervals["a"][1]
    np.testing.assert_allclose(f.predict(C), f.a * C ** f.b)
    assert f.samples.shape == (400, 3)


def test_power_law_exact_data_is_exact():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    f = fit_power_law(x, 5.0 * x ** 0.5)
    assert f.a == pytest.approx(5.0, rel=1e-12) and f.b == pytest.approx(0.5, rel=1e-12)
    assert f.loss == pytest.approx(0.0, abs=1e-20)


@pytest.mark.slow  # default-run budget (22 s); the offset form's bad input (too few points) stays in the default run
def test_power_law_with_offset_recovers_parameters():
    rng = np.random.default_rng(0)
    C = np.geomspace(1e15, 1e22, 30)
    truth = 1.7 + 400 * C ** -0.15
    y = truth * np.exp(rng.normal(0, 0.005, C.size))
    f = fit_power_law(C, y, offset=True, n_bootstrap=100)
    assert f.has_offset
    assert f.offset == pytest.approx(1.7, rel=0.03)
    assert f.b == pytest.approx(-0.15, abs=0.01)
    # at least as good as the truth on the data (the optimiser reached the optimum)
    assert f.loss <= float(((np.log(y) - np.log(truth)) ** 2).sum()) + 1e-12
    assert f.intervals["offset"][0] < 1.7 < f.intervals["offset"][1]
    np.testing.assert_allclose(f.predict(C), f.offset + f.a * C ** f.b)


def test_exp_power_law_recovers_coverage_curve():
    rng = np.random.default_rng(2)
    k = 2.0 ** np.arange(10)
    c = np.exp(-2.0 * k ** -0.4) * np.exp(rng.normal(0, 0.003, k.size))
    c = np.minimum(c, 0.999)
    f = fit_exp_power_law(k, c, n_bootstrap=300)
    assert f.a == pytest.approx(-2.0, rel=0.03)
    assert f.b == pytest.approx(-0.4, abs=0.02)
    assert f.intervals["b"][0] < -0.4 < f.intervals["b"][1]
    np.testing.assert_allclose(f.predict(k), np.exp(f.a * k ** f.b))
    assert set(f.to_dict()) >= {"law", "a", "b", "intervals"}


@pytest.mark.parametrize("fit,args,match", [
    (fit_power_law, ([1, 2, 0], [1, 2, 3]), "x contains 0"),
    (fit_power_law, ([1, 2, 3], [1, -2, 3]), "y contains -2"),
    (fit_power_law, ([1, 2, np.nan], [1, 2, 3]), "non-finite"),
    (fit_power_law, ([1, 2, 3], [1, 2]), "mismatched lengths"),
    (fit_power_law, ([1], [1]), "1 data points but 2 parameters"),
    (fit_power_law, ([2, 2, 2], [1, 2, 3]), "single distinct value"),
    (fit_exp_power_law, ([1, 2, 4], [0.5, 0.7, 1.0]), "strictly between 0 and 1"),
    (fit_exp_power_law, ([1, 2], [0.5, 0.0]), "coverage contains 0"),
    (fit_power_law, ([[1, 2], [3, 4]], [1, 2]), "expected a 1-D"),
])
def test_bad_input(fit, args, match):
    with pytest.raises(ValueError, match=match):
        fit(*args)


def test_offset_needs_three_points():
    with pytest.raises(ValueError, match="2 data points but 3 parameters"):
        fit_power_law([1, 2], [3, 2], offset=True)
