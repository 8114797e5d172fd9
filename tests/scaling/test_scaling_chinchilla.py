"""Chinchilla approach 3: reproduce Epoch AI's fit of Hoffmann et al.'s Figure 4 data; recover synthetic laws."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from ttc_jax.scaling import fit_chinchilla, load_chinchilla_csv
from ttc_jax.scaling.chinchilla import chinchilla_start_grid, huber_objective_numpy
from ttc_jax.scaling.io import chinchilla_csv_path

# Besiroglu et al. (2024), Epoch AI's replication: point estimates and 95% intervals
EPOCH_POINT = {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.348, "beta": 0.366}
EPOCH_CI = {"E": (1.769, 1.871), "A": (285.0, 744.0), "B": (1042.0, 5810.0), "alpha": (0.317, 0.373),
            "beta": (0.331, 0.415)}


@pytest.fixture(scope="module")
def data():
    return load_chinchilla_csv()


@pytest.fixture(scope="module")
def epoch_fit(data):
    return fit_chinchilla(*data, n_bootstrap=200, seed=0)


def test_vendored_data_and_source():
    path = chinchilla_csv_path()
    assert path.is_file()
    readme = (path.parent / "README.md").read_text()
    assert "epoch-research/analyzing-chinchilla" in readme and "9225883" in readme
    N, D, L = load_chinchilla_csv()
    assert len(N) == 240  # 245 points, the 5 highest losses dropped
    N0, D0, L0 = load_chinchilla_csv(drop_highest=0)
    assert len(N0) == 245 and L.max() < np.sort(L0)[-5]
    np.testing.assert_allclose(6 * N * D, 6 * N0[np.isin(L0, L)] * D0[np.isin(L0, L)])


def test_start_grid_is_the_published_one():
    g = chinchilla_start_grid()
    assert g.shape == (4500, 5)
    a, b, e, alpha, beta = g.T
    assert set(a) == set(b) == {0.0, 5.0, 10.0, 15.0, 20.0, 25.0}
    assert set(e) == {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert set(alpha) == set(beta) == {0.0, 0.5, 1.0, 1.5, 2.0}
    assert len({tuple(r) for r in g}) == 4500


def test_analytic_gradient_matches_autodiff_and_numpy(data):
    import jax
    import jax.numpy as jnp

    from ttc_jax.scaling.chinchilla import _objective, _value_and_grad

    lN, lD, lL = (np.log(v) for v in data)
    x = chinchilla_start_grid()[::500] + 0.1
    w = np.random.default_rng(0).integers(0, 3, size=len(lN)).astype(float)
    with jax.enable_x64(True):
        f, g = _value_and_grad(jnp.asarray(x), *(jnp.asarray(v) for v in (lN, lD, lL, w)), 1e-3)
        vg = jax.vmap(jax.value_and_grad(_objective), in_axes=(0, None, None, None, None, None))
        f_ad, g_ad = vg(jnp.asarray(x), *(jnp.asarray(v) for v in (lN, lD, lL, w)), 1e-3)
    np.testing.assert_allclose(f, f_ad, rtol=1e-12)
    np.testing.assert_allclose(g, g_ad, rtol=1e-10, atol=1e-14)
    f_np, g_np = huber_objective_numpy(x[3], lN, lD, lL)
    f1, g1 = _value_and_grad(jnp.asarray(x[3:4]), lN, lD, lL, np.ones_like(lN), 1e-3)
    assert float(f1[0]) == pytest.approx(f_np, rel=1e-6)  # float32 outside the x64 context
    np.testing.assert_allclose(np.asarray(g1[0]), g_np, rtol=1e-4, atol=1e-7)


def test_fit_lands_inside_epoch_intervals(epoch_fit):
    for name, (lo, hi) in EPOCH_CI.items():
        assert lo <= getattr(epoch_fit, name) <= hi, (name, getattr(epoch_fit, name))
    assert epoch_fit.n_points == 240 and epoch_fit.n_starts == 4500
    assert epoch_fit.n_at_best > 1  # the optimum is reached from many starts


def test_bootstrap_intervals_agree_with_epoch(epoch_fit):
    """Epoch's point estimates lie inside our intervals, and the intervals overlap theirs closely."""
    for name, (lo, hi) in epoch_fit.intervals.items():
        assert lo <= EPOCH_POINT[name] <= hi, (name, lo, hi)
        elo, ehi = EPOCH_CI[name]
        overlap = min(hi, ehi) - max(lo, elo)
        assert overlap > 0.7 * (ehi - elo), (name, (lo, hi), (elo, ehi))
    assert epoch_fit.samples.shape == (200, 5)


def test_optimum_cannot_be_improved_by_scipy(data, epoch_fit):
    lN, lD, lL = (np.log(v) for v in data)
    best = np.array([np.log(epoch_fit.A), np.log(epoch_fit.B), np.log(epoch_fit.E), epoch_fit.alpha, epoch_fit.beta])
    f_best, _ = huber_objective_numpy(best, lN, lD, lL)
    assert f_best == pytest.approx(epoch_fit.loss, rel=1e-10)
    polished = minimize(huber_objective_numpy, best, args=(lN, lD, lL), jac=True, method="L-BFGS-B",
                        options={"ftol": 1e-15, "gtol": 1e-12})
    assert polished.fun >= epoch_fit.loss - 1e-12
    # and scipy from a few published starts finds nothing better
    for x0 in chinchilla_start_grid()[::750]:
        r = minimize(huber_objective_numpy, x0, args=(lN, lD, lL), jac=True, method="L-BFGS-B")
        assert r.fun >= epoch_fit.loss - 1e-12


def test_recovers_a_known_law_from_noisy_synthetic_data():
    rng = np.random.default_rng(0)
    E, A, B, alpha, beta = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al.'s published law
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), 240))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), 240))
    L = (E + A / N ** alpha + B / D ** beta) * np.exp(rng.normal(0, 0.003, 240))
    fit = fit_chinchilla(N, D, L)
    assert fit.E == pytest.approx(E, rel=0.03)
    assert fit.alpha == pytest.approx(alpha, abs=0.03)
    assert fit.beta == pytest.approx(beta, abs=0.03)
    assert fit.A == pytest.approx(A, rel=0.5) and fit.B == pytest.approx(B, rel=0.5)
    Nt, Dt = np.geomspace(1e8, 1e10, 5), np.geomspace(1e10, 1e12, 5)
    np.testing.assert_allclose(fit.predict(Nt, Dt), E + A / Nt ** alpha + B / Dt ** beta, rtol=0.01)


def test_compute_optimal_matches_numeric_minimum(epoch_fit):
    for C in (1e21, 5.76e23):
        n_opt, d_opt = epoch_fit.compute_optimal(C)
        assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-10)
        r = minimize_scalar(lambda u: epoch_fit.predict(np.exp(u), C / (6 * np.exp(u))), bounds=(10, 40),
                            method="bounded", options={"xatol": 1e-10})
        assert np.log(n_opt) == pytest.approx(r.x, abs=1e-4)
    iv = epoch_fit.compute_optimal_intervals(np.array([1e22, 1e24]))
    n_opt, _ = epoch_fit.compute_optimal(np.array([1e22, 1e24]))
    assert np.all(iv["N_opt"][0] < n_opt) and np.all(n_opt < iv["N_opt"][1])
    d = epoch_fit.to_dict()
    assert d["compute_optimal_exponents"]["N"] == pytest.approx(epoch_fit.beta / (epoch_fit.alpha + epoch_fit.beta))


@pytest.mark.parametrize("args,match", [
    (([1e9, -1, 1e9, 1e9, 1e9], [1e10] * 5, [2.0] * 5), "N contains -1"),
    (([1e9] * 5, [1e10] * 5, [2.0, 0.0, 2.0, 2.0, 2.0]), "L contains 0"),
    (([1e9] * 5, [1e10, np.nan, 1e10, 1e10, 1e10], [2.0] * 5), "D contains non-finite"),
    (([1e9] * 4, [1e10] * 4, [2.0] * 4), "4 data points but 5 parameters"),
    (([1e9] * 6, [1e10] * 5, [2.0] * 6), "mismatched lengths"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        fit_chinchilla(*args)


def test_bad_options():
    N, D, L = [1e9] * 6, [1e10] * 6, [2.0] * 6
    with pytest.raises(ValueError, match="starts has shape"):
        fit_chinchilla(N, D, L, starts=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="n_bootstrap"):
        fit_chinchilla(N, D, L, n_bootstrap=-1)
    with pytest.raises(ValueError, match="drop_highest"):
        load_chinchilla_csv(drop_highest=245)
