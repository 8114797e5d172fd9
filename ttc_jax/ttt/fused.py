"""Full mini-batches of the dual form with a hand-written backward (the fast XLA path).

`minibatch_scan` runs the same recurrence as scanning `Learner.segment` + `commit` over full
mini-batches, as one `jax.custom_vjp`:

- forward: a scan over mini-batches that keeps only the fast weights at remat-group boundaries;
- backward: a reverse sweep over groups. Each group's weight chain is recomputed once from its
  boundary (the k-path: inner gradients and the update), keeping the k-path products; the reverse
  sweep over the group's mini-batches then recomputes only the q-path and applies the
  written-out derivatives (the LayerNorm-of-the-inner-gradient's second derivative included).

Per head and mini-batch, for dense layers l = 1..L with weights (W_l, b_l), phi = gelu_tanh:

    k-path: X_1 = k, Z_l = X_l W_l + b_l, X_{l+1} = phi(Z_l)
            G_L = d loss / d Z_L (the LayerNorm backward), G_l = (G_{l+1} W_{l+1}^T) * phi'(Z_l)
            P_l = lr * G_l
    q-path: Y_1 = q, Zq_l = Y_l W_l + b_l - s * (tril(Y_l X_l^T + 1) P_l), Y_{l+1} = phi(Zq_l)
            z = q + LN(Zq_L)
    update: W_l' = W_l - s_K X_l^T P_l,  b_l' = b_l - s_K sum_rows(P_l)

which is `Learner.segment` with eta[i, j] = s_i lr_j (j <= i) regrouped. Functions here act on
one head (2-D rows); callers vmap over batch and heads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ttc_jax.ttt.learners import gelu_tanh, gelu_tanh_grad


def _gelu_grad2(x):
    """d^2 gelu_tanh(x) / dx^2 (elementwise, by forward-mode differentiation of gelu_tanh_grad)."""
    return jax.jvp(gelu_tanh_grad, (x,), (jnp.ones_like(x),))[1]


def _rowsum(x):
    return x.sum(-1, keepdims=True)


def _normalize(z, eps):
    """x_hat = (z - mean) / sqrt(var + eps) and 1 / sqrt(var + eps), row by row."""
    d = z - z.mean(-1, keepdims=True)
    r = jax.lax.rsqrt((d * d).mean(-1, keepdims=True) + eps)
    return d * r, r


def _causal(n, dtype):
    i = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
    j = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    return (j <= i).astype(dtype)


# -- one mini-batch, one head ------------------------------------------------------------------------------

def k_path(ws, k, v, lr, g, b, eps):
    """Layer inputs X_l, pre-activations Z_l, inner gradients G_l and P_l = lr * G_l at weights ws."""
    n = len(ws) // 2
    xs, zs, x = [], [], k
    for i in range(n):
        xs.append(x)
        z = x @ ws[2 * i] + ws[2 * i + 1]
        zs.append(z)
        x = gelu_tanh(z) if i < n - 1 else z
    f = k.shape[-1]
    x_hat, r = _normalize(zs[-1], eps)
    g_hat = (x_hat * g + b - (v - k)) * g
    grad = (f * g_hat - _rowsum(g_hat) - x_hat * _rowsum(g_hat * x_hat)) * (r / f)
    gs = [grad]
    for i in range(n - 1, 0, -1):
        grad = (grad @ ws[2 * i].T) * gelu_tanh_grad(zs[i - 1])
        gs.insert(0, grad)
    lr = lr[:, None]
    return tuple(xs), tuple(zs), tuple(gs), tuple(lr * gi for gi in gs)


def update(ws, xs, ps, s_last):
    """Fast weights after the mini-batch."""
    new = []
    for i, (x, p) in enumerate(zip(xs, ps)):
        p = -s_last * p
        new += [ws[2 * i] + x.T @ p, ws[2 * i + 1] + p.sum(0, keepdims=True)]
    return tuple(new)


def q_path(ws, q, xs, ps, s, g, b, eps):
    """z, and the q-path products (Y_l, causal matrices A_l, Zq_l, output x_hat and 1/std)."""
    n = len(ws) // 2
    mask = _causal(q.shape[0], q.dtype)
    s = s[:, None]
    ys, attns, zqs, y = [], [], [], q
    for i in range(n):
        ys.append(y)
        a = (y @ xs[i].T + 1.0) * mask
        attns.append(a)
        zq = y @ ws[2 * i] + ws[2 * i + 1] - s * (a @ ps[i])
        zqs.append(zq)
        y = gelu_tanh(zq) if i < n - 1 else zq
    x_hat, r = _normalize(y, eps)
    return q + x_hat * g + b, (tuple(ys), tuple(attns), tuple(zqs), x_hat, r)


def q_backward(ws, xs, ps, q, s, g, b, eps, dz):
    """The q-path's share of the cotangents (independent of later mini-batches).

    Returns (layer inputs Y_l, their output cotangents dZq_l, dq, ds [K], dps, dxs, dg, db)."""
    n = len(ws) // 2
    sc = s[:, None]
    mask = _causal(q.shape[0], q.dtype)
    _, (ys, attns, zqs, xq_hat, rq) = q_path(ws, q, xs, ps, s, g, b, eps)
    dg = (dz * xq_hat).sum(0)
    db = dz.sum(0)
    dxh = dz * g
    dzq = rq * (dxh - dxh.mean(-1, keepdims=True) - xq_hat * (dxh * xq_hat).mean(-1, keepdims=True))
    ds = jnp.zeros_like(s)
    dq = dz
    dzqs, dps, dxs = [None] * n, [None] * n, [None] * n
    for i in range(n - 1, -1, -1):  # last layer first
        sdz = sc * dzq
        dzqs[i] = dzq
        ds = ds - (dzq * (attns[i] @ ps[i])).sum(-1)
        dps[i] = -(attns[i].T @ sdz)
        da = -(sdz @ ps[i].T) * mask
        dy = dzq @ ws[2 * i].T + da @ xs[i]
        dxs[i] = da.T @ ys[i]
        if i > 0:
            dzq = dy * gelu_tanh_grad(zqs[i - 1])
        else:
            dq = dq + dy
    return ys, tuple(dzqs), dq, ds, tuple(dps), tuple(dxs), dg, db


def k_backward(ws, kp, k, v, lr, s, g, b, eps, qbar, dws_next):
    """The rest of one mini-batch's backward: the update, P = lr * G and the inner gradient.

    kp: `k_path` products at ws; qbar: (ys, dzqs, dps, dxs) from `q_backward`; dws_next: cotangent of
    the weights after the mini-batch. Returns (dws, dk, dv, dlr, ds_last, dg, db)."""
    n = len(ws) // 2
    xs, zs, gs, ps = kp
    ys, dzqs, dps_q, dxs_q = qbar
    f = k.shape[-1]
    s_last = s[-1]
    dws = list(dws_next)  # W' = W - ... passes its cotangent to W
    dps, dxs = [], []
    ds_last = 0.0
    for i in range(n):  # the update W' = W - s_K X^T P, b' = b - s_K sum_rows(P)
        dw_next, db_next = dws_next[2 * i], dws_next[2 * i + 1]
        dp = xs[i] @ dw_next + db_next  # <dW', X^T P> + <db', sum P> = sum((X dW' + db') * P)
        ds_last = ds_last - (dp * ps[i]).sum()
        dps.append(dps_q[i] - s_last * dp)
        dxs.append(dxs_q[i] - s_last * (ps[i] @ dw_next.T))

    # P_l = lr * G_l
    dlr = sum(_rowsum(dp * gi) for dp, gi in zip(dps, gs))[:, 0]
    dgs = [lr[:, None] * dp for dp in dps]
    dzs = [None] * n
    # G_l = (G_{l+1} W_{l+1}^T) * phi'(Z_l), first layer first
    for i in range(n - 1):
        w_next = ws[2 * (i + 1)]
        dh = dgs[i] * gelu_tanh_grad(zs[i])
        dzs[i] = dgs[i] * (gs[i + 1] @ w_next.T) * _gelu_grad2(zs[i])
        dgs[i + 1] = dgs[i + 1] + dh @ w_next
        dws[2 * (i + 1)] = dws[2 * (i + 1)] + dh.T @ gs[i + 1]

    # G_L: the LayerNorm backward of the inner loss, differentiated
    x_hat, r = _normalize(zs[-1], eps)
    target = v - k
    g_hat = (x_hat * g + b - target) * g
    dgl = dgs[-1]
    u = dgl * (r / f)
    su, sux, s2 = _rowsum(u), _rowsum(u * x_hat), _rowsum(g_hat * x_hat)
    dg_hat = f * u - su - x_hat * sux
    dx_hat = dg_hat * (g * g) - u * s2 - g_hat * sux
    dg = (dg_hat * (2 * g * x_hat + b - target)).sum(0)
    db = (dg_hat * g).sum(0)
    dtarget = -dg_hat * g
    dr = _rowsum(dgl * gs[-1]) / r
    dzl = r * (dx_hat - dx_hat.mean(-1, keepdims=True) - x_hat * (dx_hat * x_hat).mean(-1, keepdims=True)) \
        - (dr * r * r / f) * x_hat
    dzs[-1] = dzl if dzs[-1] is None else dzs[-1] + dzl

    # k-path (and the q-path's weight gradients, in one product per layer), last layer first
    for i in range(n - 1, -1, -1):
        both = jnp.concatenate([dzqs[i], dzs[i]], axis=0)
        dws[2 * i] = dws[2 * i] + jnp.concatenate([ys[i], xs[i]], axis=0).T @ both
        dws[2 * i + 1] = dws[2 * i + 1] + both.sum(0, keepdims=True)
        dx = dxs[i] + dzs[i] @ ws[2 * i].T
        if i > 0:
            dzs[i - 1] = dzs[i - 1] + dx * gelu_tanh_grad(zs[i - 1])
    return tuple(dws), dx - dtarget, dtarget, dlr, ds_last, dg, db


def step_backward(ws, kp, q, k, v, lr, s, g, b, eps, dz, dws_next):
    """Cotangents of one mini-batch from those of its output z and of the weights after it.

    Returns (dws, dq, dk, dv, dlr, ds [K], dg, db)."""
    xs, _, _, ps = kp
    ys, dzqs, dq, ds, dps_q, dxs_q, dg_q, db_q = q_backward(ws, xs, ps, q, s, g, b, eps, dz)
    dws, dk, dv, dlr, ds_last, dg, db = k_backward(ws, kp, k, v, lr, s, g, b, eps, (ys, dzqs, dps_q, dxs_q),
                                                   dws_next)
    return dws, dq, dk, dv, dlr, ds.at[-1].add(ds_last), dg + dg_q, db + db_q


# -- batched over examples and heads, scanned over mini-batches --------------------------------------------

def _per_bh(fn, kinds):
    """vmap fn over heads then examples. kinds per argument: "bh" ([B, H, ...]), "h" ([H, ...], shared
    over examples) or None (shared by all)."""
    inner = tuple(None if kd is None else 0 for kd in kinds)
    outer = tuple(0 if kd == "bh" else None for kd in kinds)
    return jax.vmap(jax.vmap(fn, in_axes=inner), in_axes=outer)


def _take(a, t, size):
    """a[:, :, t:t + size] of a [B, H, T, ...] array, t traced."""
    return jax.lax.dynamic_slice_in_dim(a, t, size, axis=2)


def _put(buf, x, t):
    return jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), t, axis=2)


def _fns(eps):
    kp_fn = _per_bh(lambda ws, k, v, lr, g, b: k_path(ws, k, v, lr, g, b, eps), ("bh", "bh", "bh", "bh", "h", "h"))
    qp_fn = _per_bh(lambda ws, q, xs, ps, s, g, b: q_path(ws, q, xs, ps, s, g, b, eps)[0],
                    ("bh", "bh", "bh", "bh", None, "h", "h"))
    upd_fn = _per_bh(update, ("bh", "bh", "bh", None))
    return kp_fn, qp_fn, upd_fn


def _forward(ws, q, k, v, lr, s, g, b, eps, group, keep):
    """(weights after, z [B, H, n K, F], weights at each group's start (with keep) or None).

    Mini-batches are sliced from the [B, H, T, F] inputs in place and z is written into one
    buffer: no transposed copies of whole sequences."""
    kp_fn, qp_fn, upd_fn = _fns(eps)
    K = s.shape[0]
    n = q.shape[2] // K

    def body(carry, i):
        w, z = carry
        t = i * K
        kp = kp_fn(w, _take(k, t, K), _take(v, t, K), _take(lr, t, K), g, b)
        zi = qp_fn(w, _take(q, t, K), kp[0], kp[3], s, g, b)
        return (upd_fn(w, kp[0], kp[3], s[-1]), _put(z, zi, t)), None

    def group_body(carry, j):  # the group's steps unrolled: one loop level carries the z buffer
        start = carry[0]
        for i in range(group):
            carry, _ = body(carry, j * group + i)
        return carry, start if keep else None

    (w_end, z), bounds = jax.lax.scan(group_body, (ws, jnp.zeros(q.shape, q.dtype)), jnp.arange(n // group))
    return w_end, z, bounds


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def minibatch_scan(ws, q, k, v, lr, s, g, b, eps, group):
    """Scan full mini-batches: q, k, v [B, H, n K, F] and lr [B, H, n K], n a multiple of `group`.

    ws: fast weights (w1, b1, ...), [B, H, ...] each; s: [K] row factors; g, b: [H, F] inner
    LayerNorm. Returns (weights after the n mini-batches, z [B, H, n K, F]). The backward keeps the
    weights at each group's start and recomputes each group from them.
    """
    w_end, z, _ = _forward(ws, q, k, v, lr, s, g, b, eps, group, keep=False)
    return w_end, z


def _scan_fwd(ws, q, k, v, lr, s, g, b, eps, group):
    w_end, z, bounds = _forward(ws, q, k, v, lr, s, g, b, eps, group, keep=True)
    return (w_end, z), (bounds, q, k, v, lr, s, g, b)


def _scan_bwd(eps, group, res, cts):
    bounds, q, k, v, lr, s, g, b = res
    dw_end, dz = cts
    kp_fn, _, upd_fn = _fns(eps)
    bwd_fn = _per_bh(lambda ws, kp, q, k, v, lr, s, g, b, dz, dw: step_backward(ws, kp, q, k, v, lr, s, g, b, eps, dz, dw),
                     ("bh", "bh", "bh", "bh", "bh", "bh", None, "h", "h", "bh", "bh"))
    K = s.shape[0]
    n = q.shape[2] // K

    def back(carry, i, w, kp):
        dw, ds, dg, db, dq, dk, dv, dlr = carry
        t = i * K
        x = [_take(a, t, K) for a in (q, k, v, lr, dz)]
        dw, dqi, dki, dvi, dlri, ds_i, dg_i, db_i = bwd_fn(w, kp, *x[:4], s, g, b, x[4], dw)
        return (dw, ds + ds_i.sum((0, 1)), dg + dg_i.sum(0), db + db_i.sum(0),
                _put(dq, dqi, t), _put(dk, dki, t), _put(dv, dvi, t), _put(dlr, dlri, t))

    def group_back(carry, inp):  # unrolled over the group: one loop level carries the gradient buffers
        j, w = inp
        steps = []
        for i in range(group):  # the group's weights and k-path products, recomputed once from its start
            t = (j * group + i) * K
            kp = kp_fn(w, _take(k, t, K), _take(v, t, K), _take(lr, t, K), g, b)
            steps.append((w, kp))
            w = upd_fn(w, kp[0], kp[3], s[-1])
        for i in reversed(range(group)):
            carry = back(carry, j * group + i, *steps[i])
        return carry, None

    init = (dw_end, jnp.zeros_like(s), jnp.zeros_like(g), jnp.zeros_like(b),
            jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), jnp.zeros_like(lr))
    (dw0, ds, dg, db, dq, dk, dv, dlr), _ = jax.lax.scan(group_back, init, (jnp.arange(n // group), bounds),
                                                          reverse=True)
    return dw0, dq, dk, dv, dlr, ds, dg, db


minibatch_scan.defvjp(_scan_fwd, _scan_bwd)
