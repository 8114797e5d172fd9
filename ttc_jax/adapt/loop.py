"""The adaptation loop as a pure function: optimizer steps on a loss of a parameter pytree, with a
NaN/inf guard, in one `lax.while_loop`. Nothing here knows about Flax; `ttc_jax.adapt.api` supplies the loss.

Iteration i = 0, 1, ... evaluates the loss of the weights in force (after the updates accepted so far)
on batch i and, while i < n_steps, takes the step p <- p - lr * d with d = tx(grad); a last evaluation
(no gradient) checks the final weights. Guard: weights are "verified" once their loss is finite; an
update whose result is not finite, or whose weights then give a non-finite loss, is discarded, the
weights (and optimizer state) return to the last verified ones and the loop stops.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def next_token_loss(logits: jax.Array, tokens: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean next-token cross-entropy: logits [B, T-1, V] predict tokens[:, 1:] with weights[:, 1:]."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens[:, 1:])
    w = weights[:, 1:].astype(jnp.float32)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1e-9)


def crop(tokens: jax.Array, weights: jax.Array, i, key, window: int | None, order: str):
    """Batch i: the whole prefix (window None), else window + 1 tokens: segment i mod (T-1)//window
    (order "sequential", dynamic evaluation's pass over the prefix) or a crop at a start drawn from
    fold_in(key, i) (order "random")."""
    if window is None:
        return tokens, weights
    T = tokens.shape[1]
    if order == "sequential":
        start = (i % ((T - 1) // window)) * window
    else:
        start = jax.random.randint(jax.random.fold_in(key, i), (), 0, T - window)
    cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, window + 1, axis=1)
    return cut(tokens), cut(weights)


def _finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _where(c, a, b):
    return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


def adapt_loop(loss_fn: Callable, drift_fn: Callable, tx: optax.GradientTransformation, params, opt_state, *,
               tokens, weights, key, n_steps, lr, capacity: int, window: int | None, order: str):
    """Run the loop; returns (params, opt_state, trace). trace: "losses", "drift" [capacity + 1] (the loss
    and the L2 distance to the original model of the weights in force at each iteration; NaN past the
    last iteration, "iterations"), "final_drift" and "steps_done" (of the returned weights),
    "rollback_step" (1-based index of the discarded update; 0: the initial weights' loss was not
    finite; -1: no rollback).

    loss_fn(params, tokens, weights) -> scalar; drift_fn(params) -> scalar. n_steps (traced,
    <= capacity, static buffer size) and lr (traced) may differ between vmapped copies.
    """
    n_steps = jnp.asarray(n_steps, jnp.int32)
    lr = jnp.asarray(lr, jnp.float32)

    def visit(carry, update: bool):
        i, p, opt, pg, og, done, rb, nacc, losses, drifts = carry
        tok, w = crop(tokens, weights, i, key, window, order)
        if update:
            loss, g = jax.value_and_grad(loss_fn)(p, tok, w)
        else:
            loss = loss_fn(p, tok, w)
        losses, drifts = losses.at[i].set(loss), drifts.at[i].set(drift_fn(p))
        live = ~done
        loss_ok = jnp.isfinite(loss)
        verified, bad_now = live & loss_ok, live & ~loss_ok
        pg, og = _where(verified, p, pg), _where(verified, opt, og)
        p, opt = _where(bad_now, pg, p), _where(bad_now, og, opt)
        nacc = nacc - bad_now.astype(jnp.int32)
        rb = jnp.where(bad_now & (rb < 0), i, rb)
        done = done | bad_now
        if update:
            d, opt_new = tx.update(g, opt, p)
            p_new = jax.tree.map(lambda x, u: (x - lr * u).astype(x.dtype), p, d)
            ok = _finite(p_new) & _finite(opt_new)
            accept, reject = verified & ok, verified & ~ok
            p, opt = _where(accept, p_new, p), _where(accept, opt_new, opt)
            nacc = nacc + accept.astype(jnp.int32)
            rb = jnp.where(reject & (rb < 0), i + 1, rb)
            done = done | reject
        return i + 1, p, opt, pg, og, done, rb, nacc, losses, drifts

    nan = jnp.full((capacity + 1,), jnp.nan, jnp.float32)
    carry = (jnp.int32(0), params, opt_state, params, opt_state, jnp.bool_(False), jnp.int32(-1), jnp.int32(0),
             nan, nan)
    carry = jax.lax.while_loop(lambda c: (c[0] < n_steps) & ~c[5], lambda c: visit(c, True), carry)
    i, p, opt, _, _, _, rb, nacc, losses, drifts = visit(carry, False)
    trace = {"losses": losses, "drift": drifts, "iterations": i - 1, "final_drift": drift_fn(p),
             "steps_done": nacc, "rollback_step": rb}
    return p, opt, trace
