"""Pinned conventions (FLOPs to tokens, the Huber delta) and clear errors of the scaling tools."""

from __future__ import annotations

import numpy as np
import pytest

from ttc_jax.scaling.chinchilla import DEFAULT_DELTA, fit_chinchilla
from ttc_jax.scaling.curves import curves_from_dict, curves_to_dict, synthetic_curves
from ttc_jax.scaling.io import load_chinchilla_csv
from ttc_jax.scaling.passk import pass_at_k
from ttc_jax.scaling.planner import plan_budget


def test_training_flops_become_tokens_with_c_over_6n():
    """The vendored CSV's first rows: D = C / (6 N), values computed by hand from the file."""
    N, D, L = load_chinchilla_csv(drop_highest=0)
    assert N[0] == 6795600349.289497 and N[1] == 2979521172.1967993
    np.testing.assert_allclose(D[:2], [245105957.9245427, 516164661.4650345], rtol=1e-12)
    assert L[0] == 5.005581996196243


@pytest.mark.slow  # default-run budget (28 s); the default Huber fit itself is tested in test_scaling_chinchilla
def test_huber_fit_resists_outliers_that_move_least_squares():
    """Default delta 1e-3 (Hoffmann et al.): outliers barely move the fit; least squares (a huge
    delta) is dragged away from the law the clean points follow."""
    import inspect
    assert DEFAULT_DELTA == 1e-3
    assert inspect.signature(fit_chinchilla).parameters["delta"].default == DEFAULT_DELTA
    rng = np.random.default_rng(0)
    E, A, B, alpha, beta = 1.69, 406.4, 410.7, 0.34, 0.28
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), 120))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), 120))
    L = (E + A / N ** alpha + B / D ** beta) * np.exp(rng.normal(0, 0.002, 120))
    L[rng.permutation(120)[:12]] *= 1.25  # a tenth of the points far off the law
    truth = np.array([np.log(A), np.log(B), np.log(E), alpha, beta])
    starts = truth + rng.normal(0, 0.5, (64, 5)) * np.array([2.0, 2.0, 0.5, 0.1, 0.1])
    huber = fit_chinchilla(N, D, L, starts=starts)
    squares = fit_chinchilla(N, D, L, starts=starts, delta=10.0)
    assert huber.delta == 1e-3
    assert abs(huber.alpha - alpha) < 0.03 and abs(huber.E - E) / E < 0.03
    Nt, Dt = np.geomspace(1e8, 1e10, 5), np.geomspace(1e10, 1e12, 5)
    clean = E + A / Nt ** alpha + B / Dt ** beta
    err = lambda fit: np.abs(fit.predict(Nt, Dt) / clean - 1).max()
    assert err(huber) < 0.01 and err(squares) > 3 * err(huber), (err(huber), err(squares))


def test_pass_at_k_closed_form_for_huge_n():
    assert pass_at_k(10**12, 10**10, 5) == pytest.approx(1 - 0.99 ** 5, rel=1e-9)
    # both c and k large: the log-gamma closed form against the product in float64
    n, c, k = 10**7, 10**4, 10**4
    exact = -np.expm1(np.log1p(-c / (n - np.arange(k))).sum())
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-6)


def test_fit_chinchilla_checks_ci_without_bootstrap():
    N, D, L = [1e9] * 6, [1e10] * 6, [2.0] * 6
    with pytest.raises(ValueError, match=r"ci=95; expected a number strictly between 0 and 1"):
        fit_chinchilla(N, D, L, ci=95)


def _curves_json():
    return curves_to_dict(synthetic_curves(8))


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(strategies=list(d["strategies"].values())), r"strategies has type list; expected an object"),
    (lambda d: d["larger_model"].pop("accuracy"), r"larger_model=.*expected an object with 'size_ratio' and 'accuracy'"),
    (lambda d: d["bins"].update(easy="a lot"), r"bins\['easy'\]='a lot'; expected a number"),
    (lambda d: d["larger_model"]["accuracy"].update(hard="high"), r"larger_model.accuracy\['hard'\]='high'"),
])
def test_curve_json_errors_name_the_field(mutate, match):
    d = _curves_json()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        curves_from_dict(d)


def test_plan_budget_rejects_a_plain_dict():
    with pytest.raises(ValueError, match=r"curves has type dict; expected a CurveSet .*curves_from_dict"):
        plan_budget(_curves_json(), 1e10)
