"""Mosaic GPU (Hopper) forward kernel of TTT-MLP (F -> 4F -> F): `plgpu.kernel`, `wgmma`.

Same frame as the TTT-Linear kernel (kernels/ttt_linear/gpu_forward.py): one program per
sequence, 64-token tiles, the mini-batches of a tile selected by row masks. The float32 state
W1 [F, 4F], W2 [4F, F] (128 KiB at F = 64) stays in shared memory for the whole sequence, stored
in 64-wide hidden chunks; bfloat16 operand copies are staged one chunk at a time, so the hidden
activations never exist whole. Per mini-batch, two passes over the C = 4F / 64 chunks:

    pass 1:  Z2 = sum_c gelu(k W1_c + b1_c) W2_c + b2;  G2 = LN-backward(Z2, v - k)
    pass 2:  lr G1_c = ((lr G2) W2_c^T) * gelu'(Z1_c);  Zb1_c = q W1_c + b1_c - s * (P1 @ (lr G1_c))
             Y_c = gelu(Zb1_c);  A2 += Y_c X2_c^T;  Zb2 += Y_c W2_c;  commit W1_c, b1_c, W2_c
    then:    Zb2 += b2 - s * (((A2 + 1) * mask) @ (lr G2));  z = q + LN(Zb2);  commit b2

(P1 = (q k^T + 1) * causal block mask; commits W -= s_K X^T (lr G), b -= s_K colsum(lr G)).
Only F = 64 fits shared memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .. import _mosaic_gpu as mg
from ..ttt_linear.gpu_forward import TILE, GPUTileSpec, _smem, colb, ln_l2_grad, ln_stats, matmul, rowb, transposer

HC = 64  # hidden chunk
_C = math.sqrt(2.0 / math.pi)


def gelu(x):
    return 0.5 * x * (1.0 + jnp.tanh(_C * (x + 0.044715 * x * x * x)))


def gelu_grad(x):
    t = jnp.tanh(_C * (x + 0.044715 * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * x * x)


def check(F: int, K: int, operand_dtype: str, interpret: bool) -> str | None:
    """Why the Mosaic GPU TTT-MLP kernels cannot take this shape, or None."""
    if F != 64:
        return (f"head width F={F}: the Mosaic GPU ttt_mlp kernel takes F = 64 (its float32 state, "
                f"2 x F x 4F, must fit shared memory); use impl='xla'")
    if K < 8 or TILE % K:
        return f"mini_batch_size={K}: the Mosaic GPU ttt_mlp kernel takes K in (8, 16, 32, 64); use impl='xla'"
    if operand_dtype not in ("bfloat16", "float32"):
        return f"operand_dtype={operand_dtype!r}; expected 'bfloat16' or 'float32'"
    if operand_dtype == "float32" and not interpret:
        return "operand_dtype='float32' runs only in the interpreter; use 'bfloat16' on the GPU"
    return None


def forward(ts: GPUTileSpec, q, k, v, lr, s_tile, s_last, w1, b1, w2, b2, ln_scale, ln_bias):
    """q, k, v [N, T, F] (operand dtype); lr [N, T]; s_tile [TILE] (row factors tiled); s_last [F]
    (s_K repeated); w1 [N, F, 4F], b1 [N, 4F], w2 [N, 4F, F], b2 [N, F], ln_* [N, F] float32.

    Returns z [N, T, F] (operand dtype), (w1, b1, w2, b2) at the end, and the same at each tile
    start: [N, n_tiles, ...].
    """
    g = mg.plgpu()
    N, T, F = q.shape
    Hd = w1.shape[-1]
    C = Hd // HC
    K, eps, op = ts.K, ts.eps, ts.op
    n_tiles = T // TILE
    n_sub = TILE // K
    row_vec, col_vec, full = mg.layout_fns(ts.interpret)
    tr = transposer(ts.interpret)
    f32 = jnp.float32
    shp, hshp = (TILE, F), (TILE, HC)

    def body(q_ref, k_ref, v_ref, lr_ref, s_ref, sk_ref, w1_ref, b1_ref, w2_ref, b2_ref, lns_ref, lnb_ref,
             z_ref, w1e_ref, b1e_ref, w2e_ref, b2e_ref, w1b_ref, b1b_ref, w2b_ref, b2b_ref,
             w1_32, w2_32, q_s, k_s, v_s, p_s, w1c_s, w2c_s, x2_s, y_s, gl1_s, gl2_s,
             lr_s, s_s, sk_s, b1_s, b2_s, lns_s, lnb_s, bars, *tscr):
        b1_s, tscr = tscr[:C], tscr[C:]  # one (HC,) vector per hidden chunk
        n = lax.axis_index("n")
        sc = (lambda i: tscr[i]) if tscr else (lambda i: None)
        w1_rows = lambda c, t=None: pl.ds(((n if t is None else (n * n_tiles + t)) * C + c) * F, F)
        w2_rows = lambda c, t=None: pl.ds(((n if t is None else (n * n_tiles + t)) * C + c) * HC, HC)
        j = 0
        for c in range(C):
            g.copy_gmem_to_smem(w1_ref.at[w1_rows(c)], w1_32.at[c], bars.at[j])
            g.copy_gmem_to_smem(w2_ref.at[w2_rows(c)], w2_32.at[c], bars.at[j + 1])
            j += 2
        for c in range(C):
            g.copy_gmem_to_smem(b1_ref.at[n, pl.ds(c * HC, HC)], b1_s[c], bars.at[j])
            j += 1
        for src, dst in ((b2_ref.at[n], b2_s), (lns_ref.at[n], lns_s),
                         (lnb_ref.at[n], lnb_s), (s_ref, s_s), (sk_ref, sk_s)):
            g.copy_gmem_to_smem(src, dst, bars.at[j])
            j += 1
        for i in range(j):
            g.barrier_wait(bars.at[i])

        def save_state(w1_dst, b1_dst, w2_dst, b2_dst, t=None):
            for c in range(C):
                g.copy_smem_to_gmem(w1_32.at[c], w1_dst.at[w1_rows(c, t)])
                g.copy_smem_to_gmem(w2_32.at[c], w2_dst.at[w2_rows(c, t)])
            idx = (n,) if t is None else (n, t)
            for c in range(C):
                g.copy_smem_to_gmem(b1_s[c], b1_dst.at[(*idx, pl.ds(c * HC, HC))])
            g.copy_smem_to_gmem(b2_s, b2_dst.at[idx])

        def tile(t, carry):
            rows = pl.ds(n * T + t * TILE, TILE)
            g.wait_smem_to_gmem(0)  # the last tile's z (from q_s) and state copies have left
            save_state(w1b_ref, b1b_ref, w2b_ref, b2b_ref, t)
            for i, (src, dst) in enumerate(((q_ref, q_s), (k_ref, k_s), (v_ref, v_s))):
                g.copy_gmem_to_smem(src.at[rows], dst, bars.at[i])
            g.copy_gmem_to_smem(lr_ref.at[n, pl.ds(t * TILE, TILE)], lr_s, bars.at[3])
            for i in range(4):
                g.barrier_wait(bars.at[i])
            g.wait_smem_to_gmem(0)  # the boundary copies read the state before it changes

            gamma = colb(col_vec(lns_s[...]), shp)
            beta = colb(col_vec(lnb_s[...]), shp)
            sk_f = colb(col_vec(sk_s[...]), shp)  # s_K everywhere (F == HC == 64)
            s_row = rowb(row_vec(s_s[...]), shp)
            lr_row = rowb(row_vec(lr_s[...]), shp)
            ri = full(lax.broadcasted_iota(jnp.int32, (TILE, TILE), 0))
            ci = full(lax.broadcasted_iota(jnp.int32, (TILE, TILE), 1))
            rf = full(lax.broadcasted_iota(jnp.int32, shp, 0))
            mask = None
            for m in range(n_sub):
                blk = (ri >= m * K) & (ri < (m + 1) * K) & (ci >= m * K) & (ci < (m + 1) * K)
                mask = blk if mask is None else mask | blk
            mask = mask & (ci <= ri)
            p_s[...] = jnp.where(mask, matmul(q_s, tr(k_s, sc(0)), (TILE, TILE)) + 1.0, 0.0).astype(op)
            target = v_s[...].astype(f32) - k_s[...].astype(f32)
            z_acc = jnp.zeros(shp, f32)

            def stage(c):
                w1c_s[...] = w1_32[c].astype(op)
                w2c_s[...] = w2_32[c].astype(op)
                g.commit_smem()

            def b1c(c):
                return colb(col_vec(b1_s[c][...]), hshp)

            for m in range(n_sub):
                in_m = (rf >= m * K) & (rf < (m + 1) * K)
                b2 = col_vec(b2_s[...])
                # pass 1: Z2 at the mini-batch's start weights
                z2 = colb(b2, shp)
                for c in range(C):
                    stage(c)
                    x2_s[...] = gelu(matmul(k_s, w1c_s, hshp) + b1c(c)).astype(op)
                    g.commit_smem()
                    z2 = z2 + matmul(x2_s, w2c_s, shp)
                gr, _, _, _ = ln_l2_grad(z2, target, gamma, beta, F, eps)
                gr = jnp.where(in_m, gr, 0.0)
                gl2 = lr_row * gr
                gl2_s[...] = gl2.astype(op)
                # pass 2: per chunk, the layer-1 dual form, layer-2 products, and the commits
                zb2 = colb(b2, shp)
                a2 = jnp.zeros((TILE, TILE), f32)
                for c in range(C):
                    stage(c)
                    b1v = col_vec(b1_s[c][...])  # read before the barriers below; written back at the end
                    z1 = matmul(k_s, w1c_s, hshp) + colb(b1v, hshp)
                    x2_s[...] = gelu(z1).astype(op)
                    gl1 = matmul(gl2_s, tr(w2c_s, sc(1)), hshp) * gelu_grad(z1)  # lr * G1_c
                    gl1_s[...] = gl1.astype(op)
                    g.commit_smem()
                    zb1 = matmul(q_s, w1c_s, hshp) + colb(b1v, hshp) - s_row * matmul(p_s, gl1_s, hshp)
                    y_s[...] = gelu(zb1).astype(op)
                    g.commit_smem()
                    a2 = a2 + matmul(y_s, tr(x2_s, sc(2)), (TILE, TILE))
                    zb2 = zb2 + matmul(y_s, w2c_s, shp)
                    # commit chunk c (after its last use above): W1_c, b1_c, W2_c
                    w1_32[c] = w1_32[c] - sk_f * matmul(tr(k_s, sc(0)), gl1_s, (F, HC))
                    b1_s[c][...] = b1v - (sk_f * gl1).sum(axis=0)
                    w2_32[c] = w2_32[c] - sk_f * matmul(tr(x2_s, sc(2)), gl2_s, (HC, F))
                x2_s[...] = jnp.where(mask, a2 + 1.0, 0.0).astype(op)
                g.commit_smem()
                zb2 = zb2 - s_row * matmul(x2_s, gl2_s, shp)
                xh, _ = ln_stats(zb2, F, eps)
                z_acc = jnp.where(in_m, q_s[...].astype(f32) + xh * gamma + beta, z_acc)
                b2_s[...] = b2 - (sk_f * gl2).sum(axis=0)
                g.commit_smem()
            q_s[...] = z_acc.astype(op)
            g.commit_smem()
            g.copy_smem_to_gmem(q_s, z_ref.at[rows])
            return carry

        lax.fori_loop(0, n_tiles, tile, 0)
        g.wait_smem_to_gmem(0)
        save_state(w1e_ref, b1e_ref, w2e_ref, b2e_ref)
        g.wait_smem_to_gmem(0)

    n_bars = 3 * C + 5
    scratch = [g.SMEM((C, F, HC), f32, **mg.swizzled(f32, (F, HC))),
               g.SMEM((C, HC, F), f32, **mg.swizzled(f32, (HC, F))),
               _smem(shp, op), _smem(shp, op), _smem(shp, op), _smem((TILE, TILE), op),
               _smem((F, HC), op), _smem((HC, F), op), _smem(hshp, op), _smem(hshp, op), _smem(hshp, op),
               _smem(shp, op),
               _smem((TILE,), f32), _smem((TILE,), f32), _smem((F,), f32), _smem((F,), f32), _smem((F,), f32),
               _smem((F,), f32), _smem((F,), f32), g.Barrier(num_barriers=n_bars)]
    scratch += [_smem((HC,), f32) for _ in range(C)]  # b1 by chunk
    if ts.interpret:
        scratch += [_smem((F, TILE), op), _smem((F, HC), op), _smem((HC, TILE), op)]
    sd = jax.ShapeDtypeStruct
    out_type = (sd((N * T, F), op), sd((N * C * F, HC), f32), sd((N, Hd), f32), sd((N * C * HC, F), f32),
                sd((N, F), f32), sd((N * n_tiles * C * F, HC), f32), sd((N, n_tiles, Hd), f32),
                sd((N * n_tiles * C * HC, F), f32), sd((N, n_tiles, F), f32))
    kern = g.kernel(body, out_type=out_type, grid=(N,), grid_names=("n",), scratch_types=scratch,
                    interpret=mg.interpret_params(ts.interpret, ts.detect_races))
    # W1 [N, F, 4F] -> chunk-major [N, C, F, HC]; W2 [N, 4F, F] is chunk-major already
    w1c = w1.reshape(N, F, C, HC).transpose(0, 2, 1, 3).reshape(N * C * F, HC)
    outs = kern(q.reshape(N * T, F), k.reshape(N * T, F), v.reshape(N * T, F), lr, s_tile, s_last, w1c, b1,
                w2.reshape(N * C * HC, F), b2, ln_scale, ln_bias)
    z, w1e, b1e, w2e, b2e, w1b, b1b, w2b, b2b = outs
    unchunk = lambda a, lead: a.reshape(*lead, C, F, HC).swapaxes(-3, -2).reshape(*lead, F, Hd)
    return (z.reshape(N, T, F), (unchunk(w1e, (N,)), b1e, w2e.reshape(N, Hd, F), b2e),
            (unchunk(w1b, (N, n_tiles)), b1b, w2b.reshape(N, n_tiles, Hd, F), b2b))
