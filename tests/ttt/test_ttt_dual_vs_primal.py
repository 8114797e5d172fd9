"""Dual form (impl="xla") against the primal definition (impl="reference") in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.ttt.testing import random_inputs
from ttc_jax.ttt import ttt

KINDS = ["ttt_linear", "ttt_mlp"]


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 15, 16, 17, 100])
def test_dual_equals_primal_float64(kind, T):
    with jax.enable_x64(True):
        args = random_inputs(kind, T=T, dtype=jnp.float64)
        z, state = ttt(kind, *args, impl="xla")
        z_ref, state_ref = ttt(kind, *args, impl="reference")
        assert z.dtype == jnp.float64
        assert rel_err(z, z_ref) < 1e-10
        for name in state.weights:
            assert rel_err(state.weights[name], state_ref.weights[name]) < 1e-10
            assert np.allclose(state.acc[name], state_ref.acc[name], rtol=1e-10, atol=1e-12)
        assert int(state.pos) == int(state_ref.pos) == T % 16


@pytest.mark.parametrize("kind", KINDS)
# default-run budget: T = 100 (six mini-batches and a partial seventh) runs by default; 1, 15 (partial only),
# 16 and 17 (one past a boundary) with the slow set
@pytest.mark.parametrize("T", [pytest.param(1, marks=pytest.mark.slow), pytest.param(15, marks=pytest.mark.slow),
                               pytest.param(16, marks=pytest.mark.slow), pytest.param(17, marks=pytest.mark.slow),
                               100])
def test_gradients_dual_equal_primal_float64(kind, T):
    """d/d(every input and weight) of a random projection of z and the final state."""
    with jax.enable_x64(True):
        args = random_inputs(kind, T=T, dtype=jnp.float64, seed=1)
        rng = np.random.default_rng(2)
        z_proj = jnp.asarray(rng.standard_normal(args[0].shape))
        w_proj = jax.tree.map(lambda w: jnp.asarray(rng.standard_normal((2, *w.shape))), args[5])

        def objective(impl):
            def f(*a):
                z, state = ttt(kind, *a, impl=impl, remat_group=2)
                tail = sum((state.weights[n] * w_proj[n]).sum() + (state.acc[n] * w_proj[n]).sum()
                           for n in w_proj)
                return (z * z_proj).sum() + tail
            return f

        argnums = tuple(range(8))
        g = jax.grad(objective("xla"), argnums=argnums)(*args)
        g_ref = jax.grad(objective("reference"), argnums=argnums)(*args)
        for gi, gr in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            assert np.abs(np.asarray(gr)).max() > 0
            assert rel_err(gi, gr) < 1e-10
