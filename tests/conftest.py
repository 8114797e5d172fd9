"""Shared test helpers: random TTT inputs (never zeros)."""

import numpy as np
import jax.numpy as jnp
import pytest

from ttc_jax.ttt import LEARNERS


def make_ttt_inputs(kind, *, B=2, H=3, T=37, F=8, K=16, seed=0, dtype=jnp.float32):
    """Random q, k, v, lr, token_scale, weights, ln_scale, ln_bias for `kind`."""
    rng = np.random.default_rng(seed)
    r = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)
    q, k, v = r(B, H, T, F), r(B, H, T, F), r(B, H, T, F)
    lr = jnp.asarray(rng.uniform(0.01, 0.3, (B, H, T)), dtype)
    token_scale = jnp.asarray(1.0 / np.arange(1, K + 1) + rng.uniform(-0.02, 0.02, K), dtype)
    weights = {n: 0.3 * r(*s) for n, s in LEARNERS[kind].weight_shapes(H, F).items()}
    return q, k, v, lr, token_scale, weights, 1.0 + 0.1 * r(H, F), 0.1 * r(H, F)


@pytest.fixture
def ttt_inputs():
    return make_ttt_inputs
