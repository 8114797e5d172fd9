"""The batched L-BFGS solver: many independent problems, different difficulty, one compiled loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from ttc_jax.scaling.optim import minimize_lbfgs_batched


def _run(fun, x0, data=None, **kw):
    """fun(x[P], row) with row = data[lane] (or None)."""
    with jax.enable_x64(True):
        vg = jax.value_and_grad(fun)
        d = None if data is None else jnp.asarray(data)

        @jax.jit
        def solve(x0):
            def fg(x, lane):
                rows = jnp.zeros((x.shape[0], 1)) if d is None else d[lane]
                return jax.vmap(vg)(x, rows)
            return minimize_lbfgs_batched(fg, x0, **kw)

        return jax.tree.map(np.asarray, solve(jnp.asarray(x0, jnp.float64)))


def test_ill_conditioned_quadratics_each_reach_their_own_minimum():
    rng = np.random.default_rng(0)
    B, P = 37, 4
    centres = rng.normal(size=(B, P))
    conds = np.geomspace(1, 1e4, B)  # lanes need very different iteration counts
    data = np.concatenate([centres, conds[:, None]], 1)

    def f(x, row):
        c, k = row[:P], row[P]
        scales = k ** (jnp.arange(P) / (P - 1))
        return 0.5 * jnp.sum(scales * (x - c) ** 2)

    res = _run(f, np.zeros((B, P)), data, gtol=1e-10, ftol=0.0, max_iter=500, min_capacity=4)
    np.testing.assert_allclose(res.x, centres, atol=1e-8)
    assert res.converged.all()
    assert res.n_iter.min() < res.n_iter.max()  # lanes finished at different times
    assert res.n_eval.min() >= res.n_iter.min() + 1


def rosenbrock(x, row=None):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def test_rosenbrock_matches_scipy():
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-2, 2, size=(20, 3))
    res = _run(rosenbrock, x0, gtol=1e-9, ftol=0.0, max_iter=2000)
    assert res.converged.all()
    np.testing.assert_allclose(res.x, 1.0, atol=1e-6)
    ref = minimize(lambda x: float(rosenbrock(jnp.asarray(x))), x0[0], method="L-BFGS-B")
    assert res.f[0] <= ref.fun + 1e-12


def test_iteration_cap_and_non_finite_starts():
    x0 = np.array([[-1.5, 2.0, 0.5], [np.nan, 0.0, 0.0]])
    res = _run(rosenbrock, x0, gtol=1e-12, ftol=0.0, max_iter=3)
    assert res.n_iter[0] == 3 and not res.converged[0]
    assert not res.converged[1] and res.n_iter[1] == 0
    assert res.f[0] < float(rosenbrock(jnp.asarray(x0[0])))  # it still made progress


@pytest.mark.parametrize("B", [1, 9, 70])
def test_capacity_tiers_cover_any_batch_size(B):
    x0 = np.linspace(-3, 3, B)[:, None] * np.ones((1, 2))
    res = _run(lambda x, row: jnp.sum((x - 0.25) ** 4 + (x - 0.25) ** 2), x0, gtol=1e-10, ftol=0.0)
    np.testing.assert_allclose(res.x, 0.25, atol=1e-6)
    assert res.converged.all()
