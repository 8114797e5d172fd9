"""Hand-written VJP of one mini-batch of the dual form (`minibatch.step`), for kernel bodies.

`step_fwd` runs the forward once and keeps the intermediates its backward reads (2-D tiles,
float32); `step_bwd` maps them and the cotangents (dz, dW') to the gradients of every input,
the same tuple `jax.vjp(minibatch.step, ...)` returns. With Gl_l = lr * G_l, sK = s[K-1],
mask = tril(ones), C_l = X_l dW'_l + db'_l (commit), per layer l = L..1 on the q-path

    dZbar_L = LN'(Zbar_L)^T (gamma dz);       dW_l += Xq_l^T dZbar_l + dW'_l;  db_l += colsum(dZbar_l) + db'_l
    dP_l = -s dZbar_l;  ds -= rowsum(dZbar_l * P_l);  dA_l = (dP_l Gl_l^T) * mask
    dGl_l = A_l^T dP_l - sK C_l;  ds[K-1] -= sum(Gl_l * C_l)
    dXq_l = dZbar_l W_l^T + dA_l X_l  (-> dZbar_{l-1} = dXq_l * gelu'(Zbar_{l-1}), or dq = dz + dXq_1)
    dX_l = dA_l^T Xq_l - sK Gl_l dW'_l^T

then dG_l = lr dGl_l, dlr = sum_l rowsum(dGl_l * G_l), back through G_l = H_l * gelu'(Z_l),
H_l = G_{l+1} W_{l+1}^T (l = 1..L-1), the second-order LayerNorm backward of
G_L = LN-grad(Z_L, v - k) and the k-path Z_l = X_l W_l + b_l down to dk and dv.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ttc_jax.ttt.learners import _GELU_C, gelu_tanh_grad, layer_norm

from .minibatch import F32, Dots, _commit, causal_ones, inner_parts, q_path


class Residuals(NamedTuple):
    """What `step_bwd` reads; per-layer tuples have one entry per dense layer (hs: L - 1)."""

    ws: tuple  # (w1, b1, ...) at the mini-batch's start (step_bwd reads only w1, w2, ...)
    target: jax.Array  # v - k [K, F]
    lr: jax.Array  # [K, 1]
    s: jax.Array  # [K, 1]
    ln_scale: jax.Array  # [1, F]
    ln_bias: jax.Array
    xs: tuple  # X_l(k), xs[0] = k
    zs: tuple  # Z_l = X_l W_l + b_l
    hs: tuple  # H_l = G_{l+1} W_{l+1}^T
    gs: tuple  # lr-free output gradients G_l
    xqs: tuple  # Xq_l, xqs[0] = q
    amats: tuple  # tril(Xq_l X_l^T + 1)
    ps: tuple  # A_l Gl_l
    zbs: tuple  # Zbar_l


def step_fwd(ws, q, k, v, lr, s, ln_scale, ln_bias, eps, dots: Dots = F32):
    """(z, weights after the mini-batch, Residuals): the outputs are `minibatch.step`'s, bit for bit."""
    xs, zs, hs, gs = inner_parts(ws, k, v, ln_scale, ln_bias, eps, dots)
    gls = [lr * g for g in gs]
    xqs, amats, ps, zbs = q_path(ws, q, xs, gls, s, dots)
    out = q + layer_norm(zbs[-1], ln_scale, ln_bias, eps)
    res = Residuals(tuple(ws), v - k, lr, s, ln_scale, ln_bias, *(tuple(a) for a in (xs, zs, hs, gs, xqs, amats,
                                                                                       ps, zbs)))
    return out, _commit(ws, xs, gls, s[-1:, :], dots), res


def gelu_tanh_grad2(x):
    """d^2 gelu_tanh(x) / dx^2."""
    a = 0.044715
    t = jnp.tanh(_GELU_C * (x + a * x**3))
    du = _GELU_C * (1.0 + 3 * a * x * x)
    return (1.0 - t * t) * (du + 0.5 * x * (6 * a * _GELU_C * x - 2.0 * t * du * du))


def _ln_stats(z, eps):
    """(x_hat, 1 / std) of a row LayerNorm, as `layer_norm` and `ln_l2_grad` compute them."""
    mu = z.mean(-1, keepdims=True)
    inv = jax.lax.rsqrt(((z - mu) ** 2).mean(-1, keepdims=True) + eps)
    return (z - mu) * inv, inv


def _ln_bwd(dxh, xh, inv):
    """dz of x_hat(z) = (z - mean) / std, given dx_hat, row by row."""
    f = xh.shape[-1]
    return inv * (dxh - dxh.sum(-1, keepdims=True) / f - xh * ((dxh * xh).sum(-1, keepdims=True) / f))


def step_bwd(res: Residuals, dz, dws, eps, dots: Dots = F32):
    """Cotangents (dz [K, F], dW' = (dw1', db1', ...)) -> (dws, dq, dk, dv, dlr, ds, dln_scale, dln_bias)."""
    n = len(res.ws) // 2
    W = res.ws[0::2]
    s, lr, gam, bet = res.s, res.lr, res.ln_scale, res.ln_bias
    K = s.shape[0]
    s_last = s[-1:, :]
    mask = causal_ones(K)
    last_row = jax.lax.broadcasted_iota(jnp.int32, (K, 1), 0) == K - 1
    gls = [lr * g for g in res.gs]
    dW = [dws[2 * i] for i in range(n)]
    db = [dws[2 * i + 1] for i in range(n)]

    # the commit W_l' = W_l - sK X_l^T Gl_l, b_l' = b_l - sK colsum(Gl_l)
    dgl, dX, ds_last = [], [], 0.0
    for i in range(n):
        c = dots.mm(res.xs[i], dws[2 * i]) + dws[2 * i + 1]
        dgl.append(-s_last * c)
        ds_last = ds_last - (gls[i] * c).sum()
        dX.append(-s_last * dots.mm_nt(gls[i], dws[2 * i]))

    # the output z = q + LN(Zbar_L)
    xh, inv = _ln_stats(res.zbs[-1], eps)
    dgam, dbet = (dz * xh).sum(0, keepdims=True), dz.sum(0, keepdims=True)
    dzb = _ln_bwd(dz * gam, xh, inv)

    # the q-path, layer L down to 1
    ds = jnp.zeros_like(s)
    for i in range(n - 1, -1, -1):
        xq = res.xqs[i]
        dW[i] = dW[i] + dots.mm_tn(xq, dzb)
        db[i] = db[i] + dzb.sum(0, keepdims=True)
        ds = ds - (dzb * res.ps[i]).sum(-1, keepdims=True)
        dp = -s * dzb
        da = dots.mm_nt(dp, gls[i]) * mask
        dgl[i] = dgl[i] + dots.mm_tn(res.amats[i], dp)
        dX[i] = dX[i] + dots.mm_tn(da, xq)
        dxq = dots.mm_nt(dzb, W[i]) + dots.mm(da, res.xs[i])
        if i:
            dzb = dxq * gelu_tanh_grad(res.zbs[i - 1])
    dq = dz + dxq
    ds = ds + jnp.where(last_row, ds_last, 0.0)

    # Gl_l = lr * G_l
    dg = [lr * d for d in dgl]
    dlr = sum((d * g).sum(-1, keepdims=True) for d, g in zip(dgl, res.gs))

    # G_l = H_l * gelu'(Z_l), H_l = G_{l+1} W_{l+1}^T, l = 1..L-1 (dG_l is complete before dG_{l+1})
    dz_extra = []
    for i in range(n - 1):
        dh = dg[i] * gelu_tanh_grad(res.zs[i])
        dz_extra.append(dg[i] * res.hs[i] * gelu_tanh_grad2(res.zs[i]))
        dg[i + 1] = dg[i + 1] + dots.mm(dh, W[i + 1])
        dW[i + 1] = dW[i + 1] + dots.mm_tn(dh, res.gs[i + 1])

    # G_L = LN-grad(Z_L, v - k): the LayerNorm backward, differentiated once more
    d = dg[-1]
    xh, inv = _ln_stats(res.zs[-1], eps)
    f = xh.shape[-1]
    gh = (xh * gam + bet - res.target) * gam
    c = inv / f
    r1, r2 = d.sum(-1, keepdims=True), (d * xh).sum(-1, keepdims=True)
    dgh = inv * d - c * r1 - c * r2 * xh
    dxh = -c * (gh * xh).sum(-1, keepdims=True) * d - c * r2 * gh + dgh * gam * gam
    dtarget = -dgh * gam
    dgam = dgam + (dgh * (2.0 * xh * gam + bet - res.target)).sum(0, keepdims=True)
    dbet = dbet + (dgh * gam).sum(0, keepdims=True)
    # 1/std also enters G's overall factor: its row sum joins x_hat's
    dzk = _ln_bwd(dxh, xh, inv) - (inv / f) * xh * (d * res.gs[-1]).sum(-1, keepdims=True)

    # the k-path Z_l = X_l W_l + b_l, layer L down to 1
    for i in range(n - 1, -1, -1):
        dW[i] = dW[i] + dots.mm_tn(res.xs[i], dzk)
        db[i] = db[i] + dzk.sum(0, keepdims=True)
        dx = dX[i] + dots.mm_nt(dzk, W[i])
        if i:
            dzk = dx * gelu_tanh_grad(res.zs[i - 1]) + dz_extra[i - 1]
    dk = dx - dtarget
    dws0 = tuple(a for pair in zip(dW, db) for a in pair)
    return dws0, dq, dk, dtarget, dlr, ds, dgam, dbet
