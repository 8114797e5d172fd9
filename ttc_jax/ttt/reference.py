"""The primal form of mini-batch TTT: the definition, token by token.

For token i of a mini-batch that starts at weights W,

    g_j = d l_j / d W  (at W),   W_i = W - s_i * sum_{j <= i} lr_j g_j,
    z_i = q_i + LN(f(q_i; W_i)),

and the next mini-batch starts at W_{K-1}. Gradients come from `jax.grad` of
the per-token loss, outputs from the primal f: nothing is shared with the dual
form but the learner's forward. Slow; for tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttc_jax.ttt.learners import Learner, commit, layer_norm
from ttc_jax.ttt.state import TTTState


def primal(learner: Learner, q, k, v, lr, token_scale, state: TTTState, ln_scale, ln_bias, eps):
    """z [B, H, T, F] and the state after the T tokens."""
    mini_batch_size = token_scale.shape[0]

    def one_head(w0, acc0, q, k, v, lr, ln_scale, ln_bias, pos0):
        grad_fn = jax.grad(lambda w, kt, vt: learner.loss(w, kt[None], vt[None], ln_scale, ln_bias, eps)[0])

        def step(carry, tok):
            w, acc, pos = carry
            qt, kt, vt, lrt = tok
            g = grad_fn(w, kt, vt)
            acc = jax.tree.map(lambda a, gi: a + lrt * gi, acc, g)
            w_t = commit(w, acc, token_scale[pos])
            zt = qt + layer_norm(learner.apply(w_t, qt[None])[0], ln_scale, ln_bias, eps)
            done = pos == mini_batch_size - 1
            w = jax.tree.map(lambda a, b: jnp.where(done, a, b), w_t, w)
            acc = jax.tree.map(lambda a: jnp.where(done, jnp.zeros_like(a), a), acc)
            return (w, acc, (pos + 1) % mini_batch_size), zt

        (w, acc, pos), z = jax.lax.scan(step, (w0, acc0, pos0), (q, k, v, lr))
        return z, w, acc, pos

    per_head = jax.vmap(one_head, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, None))
    per_example = jax.vmap(per_head, in_axes=(0, 0, 0, 0, 0, 0, None, None, None))
    z, w, acc, pos = per_example(state.weights, state.acc, q, k, v, lr, ln_scale, ln_bias,
                                 jnp.asarray(state.pos, jnp.int32))
    return z, TTTState(weights=w, acc=acc, pos=pos[0, 0])
