"""The dual form of mini-batch TTT as a `lax.scan` over mini-batches (impl="xla").

A call splits its T tokens into: a head that completes the mini-batch left
unfinished by `state` (if any), full mini-batches scanned with
rematerialisation in groups, and a short tail that stays uncommitted in the
returned state. When the state's position is traced (inside `jit` with a
carried state, e.g. a decode step), the tokens are scanned one at a time with
a dynamic position instead; both are exact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange

from ttc_jax.ttt.fused import minibatch_scan
from ttc_jax.ttt.learners import Learner, commit
from ttc_jax.ttt.state import TTTState, static_pos


def grouped_scan(body, carry, xs, group: int):
    """`lax.scan(body, carry, xs)`, rematerialised in groups of `group` steps.

    The backward pass stores the carry once per group and recomputes the group,
    so its memory grows with n / group carries. group == 0 disables remat.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    if group <= 0:
        return jax.lax.scan(body, carry, xs)
    group_body = jax.checkpoint(lambda c, x: jax.lax.scan(body, c, x), prevent_cse=False)
    n_groups, rem = divmod(n, group)
    parts = []
    if n_groups:
        xg = jax.tree.map(lambda a: a[: n_groups * group].reshape(n_groups, group, *a.shape[1:]), xs)
        carry, ys = jax.lax.scan(group_body, carry, xg)
        parts.append(jax.tree.map(lambda a: a.reshape(n_groups * group, *a.shape[2:]), ys))
    if rem:
        carry, ys = group_body(carry, jax.tree.map(lambda a: a[n_groups * group:], xs))
        parts.append(ys)
    ys = parts[0] if len(parts) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
    return carry, ys


def _batched_segment(learner: Learner, eps: float, stats: bool):
    """learner.segment vmapped over heads then examples; s is shared."""
    seg = functools.partial(learner.segment, eps=eps, stats=stats)
    per_head = jax.vmap(seg, in_axes=(0, 0, 0, 0, 0, 0, None, 0, 0))
    return jax.vmap(per_head, in_axes=(0, 0, 0, 0, 0, 0, None, None, None))


def _zeros(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def dual(learner: Learner, q, k, v, lr, token_scale, state: TTTState, ln_scale, ln_bias, eps,
         *, remat_group: int = 4, stats: bool = False, fused: bool = True):
    """z [B, H, T, F], the new state, and per-segment stats ([B, H, n_segments]) or None.

    fused=False scans `Learner.segment` under `jax.checkpoint` for full mini-batches too (the
    implementation before `fused.minibatch_scan`; for tests and benchmarks)."""
    p = static_pos(state)
    if p is None:
        return _tokenwise(learner, q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps, stats=stats)
    seg = _batched_segment(learner, eps, stats)
    mini_batch_size = token_scale.shape[0]
    T = q.shape[2]
    w, acc = state.weights, state.acc
    outs, stat_parts = [], []
    t = 0

    def take(a, start, stop):
        return a[:, :, start:stop]

    def partial_segment(w, acc, start, stop, s):
        """Tokens start..stop-1 as one segment with row factors s; appends z and stats."""
        z, acc, st = seg(w, acc, *(take(a, start, stop) for a in (q, k, v, lr)), s, ln_scale, ln_bias)
        outs.append(z)
        stat_parts.append(jax.tree.map(lambda a: a[..., None], st))
        return acc

    if p > 0:  # finish the mini-batch the state left open
        h = min(mini_batch_size - p, T)
        acc = partial_segment(w, acc, 0, h, token_scale[p:p + h])
        p, t = p + h, h
        if p == mini_batch_size:
            w, acc, p = commit(w, acc, token_scale[-1]), _zeros(acc), 0

    n_full = (T - t) // mini_batch_size
    if n_full and fused and not stats and remat_group > 0:  # the fused scan with its written-out backward
        w = _fused_minibatches(learner, w, (take(a, t, t + n_full * mini_batch_size) for a in (q, k, v, lr)),
                               token_scale, ln_scale, ln_bias, eps, remat_group, outs)
        t += n_full * mini_batch_size
    elif n_full:  # with stats, or without remat: the per-mini-batch segment, differentiated by JAX
        end = t + n_full * mini_batch_size
        split = lambda a: rearrange(a, "b h (n k) ... -> n b h k ...", k=mini_batch_size)
        xs = tuple(split(take(a, t, end)) for a in (q, k, v, lr))

        def body(w, x):
            z, a, st = seg(w, None, *x, token_scale, ln_scale, ln_bias)
            return commit(w, a, token_scale[-1]), (z, st)

        w, (z, st) = grouped_scan(body, w, xs, remat_group)
        outs.append(rearrange(z, "n b h k f -> b h (n k) f"))
        stat_parts.append(jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), st))
        t = end

    if t < T:  # a short last mini-batch: its updates stay in acc
        p = T - t
        acc = partial_segment(w, None, t, T, token_scale[:p])

    z = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
    new_state = TTTState(weights=w, acc=acc, pos=p)  # static: the fast path continues inside jit too
    all_stats = None
    if stats:
        all_stats = jax.tree.map(lambda *a: jnp.concatenate(a, axis=-1), *stat_parts)
    return z, new_state, all_stats


def _fused_minibatches(learner: Learner, w, xs, token_scale, ln_scale, ln_bias, eps, remat_group, outs):
    """Full mini-batches through `fused.minibatch_scan` in groups of remat_group (>= 1), a shorter
    last group on its own. Appends z to outs."""
    names = [f"{p}{i + 1}" for i in range(learner.n_layers) for p in "wb"]
    ws = tuple(w[n] for n in names)
    q, k, v, lr = xs
    K = token_scale.shape[0]
    n = q.shape[2] // K
    group = min(remat_group, n)
    n_main = n // group * group
    for start, stop, g in ((0, n_main, group), (n_main, n, n - n_main)):
        if stop > start:
            part = (a if (start, stop) == (0, n) else a[:, :, start * K:stop * K] for a in (q, k, v, lr))
            ws, z = minibatch_scan(ws, *part, token_scale, ln_scale, ln_bias, eps, g)
            outs.append(z)
    return dict(zip(names, ws))


def _tokenwise(learner, q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps, *, stats):
    """Exact fallback for a traced state position: one token per scan step.

    The step commits the fast weights under `lax.cond` only when a mini-batch ends. Under `jax.vmap`
    with a position that differs per example (e.g. a leading sample axis) JAX turns the cond into a
    select that computes the commit every token (benchmarks/ttt_decode.py measures the cost: on a
    shared 2-core CPU the select was not slower, 108 vs 121 ms per token for TTT-Linear, S=8 x H=12,
    F=64; what the cond saves there is FLOPs, 2 F^2 per head and token, not CPU time).
    """
    seg = _batched_segment(learner, eps, stats)
    mini_batch_size = token_scale.shape[0]

    def step(carry, x):
        w, acc, pos = carry
        qt, kt, vt, lrt = (a[:, :, None] for a in x)
        s = jax.lax.dynamic_slice_in_dim(token_scale, pos, 1)
        z, acc, st = seg(w, acc, qt, kt, vt, lrt, s, ln_scale, ln_bias)
        # commit only when the mini-batch ends (a select of both branches if pos is batched under vmap)
        w, acc = jax.lax.cond(pos == mini_batch_size - 1,
                              lambda w, acc: (commit(w, acc, s[0]), _zeros(acc)),
                              lambda w, acc: (w, acc), w, acc)
        return (w, acc, (pos + 1) % mini_batch_size), (z[:, :, 0], st)

    xs = tuple(jnp.moveaxis(a, 2, 0) for a in (q, k, v, lr))
    carry = (state.weights, state.acc, jnp.asarray(state.pos, jnp.int32))
    (w, acc, pos), (z, st) = jax.lax.scan(step, carry, xs)
    st = jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), st) if stats else None
    return jnp.moveaxis(z, 0, 2), TTTState(weights=w, acc=acc, pos=pos), st
