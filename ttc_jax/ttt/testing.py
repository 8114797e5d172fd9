"""Random inputs for the TTT inner loop, shared by tests and benchmarks (never zeros)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ttc_jax.ttt.learners import LEARNERS


def random_inputs(kind: str, *, B: int = 2, H: int = 3, T: int = 37, F: int = 8, K: int = 16, seed: int = 0,
                  dtype=jnp.float32, weight_scale: float = 0.3, lr_range: tuple[float, float] = (0.01, 0.3)):
    """q, k, v [B, H, T, F], lr [B, H, T], token_scale [K], weights, ln_scale, ln_bias [H, F] for `kind`.

    Defaults stress the inner loop (large weights and rates); benchmarks pass published-like scales.
    """
    rng = np.random.default_rng(seed)
    r = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)
    q, k, v = r(B, H, T, F), r(B, H, T, F), r(B, H, T, F)
    lr = jnp.asarray(rng.uniform(*lr_range, (B, H, T)), dtype)
    token_scale = jnp.asarray(1.0 / np.arange(1, K + 1) + rng.uniform(-0.02, 0.02, K), dtype)
    weights = {n: weight_scale * r(*s) for n, s in LEARNERS[kind].weight_shapes(H, F).items()}
    return q, k, v, lr, token_scale, weights, 1.0 + 0.1 * r(H, F), 0.1 * r(H, F)
