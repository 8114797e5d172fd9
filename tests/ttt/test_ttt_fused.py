"""The fused mini-batch scan (written-out backward) against JAX's derivative of the segment scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.ttt import LEARNERS
from ttc_jax.ttt.dual import dual
from ttc_jax.ttt.state import init_state
from ttc_jax.ttt.testing import random_inputs


@pytest.mark.parametrize("kind", ["ttt_linear", pytest.param("ttt_mlp", marks=pytest.mark.slow)])
def test_fused_scan_equals_autodiff_float64(kind):
    """Values and the gradients of every input (token_scale and the inner LayerNorm included) of z and
    the final state: a carried state's open mini-batch first, 3 full mini-batches in groups of 2 (one
    group of 2, a last group of 1), a short tail."""
    with jax.enable_x64(True):
        K, T = 8, 3 + 3 * 8 + 4
        q, k, v, lr, ts, w, lns, lnb = random_inputs(kind, B=2, H=2, T=T, F=4, K=K, dtype=jnp.float64, seed=11)
        _, start, _ = dual(LEARNERS[kind], q[:, :, :5], k[:, :, :5], v[:, :, :5], lr[:, :, :5], ts,
                        init_state(w, 2, jnp.float64), lns, lnb, 1e-6)  # leaves 5 of 8 tokens open
        rng = np.random.default_rng(12)
        z_proj = jnp.asarray(rng.standard_normal(q.shape))
        w_proj = {n: jnp.asarray(rng.standard_normal(a.shape)) for n, a in start.weights.items()}

        def objective(fused):
            def f(q, k, v, lr, ts, weights, lns, lnb):
                state = type(start)(weights=weights, acc=start.acc, pos=start.pos)
                z, new, _ = dual(LEARNERS[kind], q, k, v, lr, ts, state, lns, lnb, 1e-6, remat_group=2, fused=fused)
                return (z * z_proj).sum() + sum((new.weights[n] * w_proj[n]).sum() + (new.acc[n] * w_proj[n]).sum()
                                                for n in w_proj)
            return f

        args = (q, k, v, lr, ts, start.weights, lns, lnb)
        val, grads = jax.value_and_grad(objective(True), argnums=tuple(range(8)))(*args)
        val_ref, grads_ref = jax.value_and_grad(objective(False), argnums=tuple(range(8)))(*args)
        np.testing.assert_allclose(val, val_ref, rtol=1e-12)
        for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
            assert np.abs(np.asarray(g_ref)).max() > 0
            np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-12 * np.abs(np.asarray(g_ref)).max())


def test_fused_scan_under_vmap_float32():
    """vmap over a leading sample axis of value_and_grad (best-of-N / per-sample gradients)."""
    q, k, v, lr, ts, w, lns, lnb = random_inputs("ttt_linear", B=1, H=2, T=32, F=8, K=8, seed=13)
    qs = jnp.stack([q, 0.5 * q])

    def loss(q, fused):
        z, _, _ = dual(LEARNERS["ttt_linear"], q, k, v, lr, ts, init_state(w, 1), lns, lnb, 1e-6,
                       remat_group=2, fused=fused)
        return (z * z).mean()

    got = jax.vmap(jax.value_and_grad(lambda q: loss(q, True)))(qs)
    ref = jax.vmap(jax.value_and_grad(lambda q: loss(q, False)))(qs)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
