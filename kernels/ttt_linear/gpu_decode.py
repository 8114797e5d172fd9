"""Mosaic GPU decode kernel of TTT-Linear: one token for each of N sequences (batched, vmap-able).

One program (one warpgroup) per sequence. A decode step is matrix-vector work, so no wgmma:
W and the accumulated update are [F, F] float32 register tiles, and each per-token vector x
(length F) is handled as the tile X[i, j] = x_j, whose row reductions are the vector's
reductions (the LayerNorm and its backward run on that tile unchanged). k W is
sum_i k_i W[i, :], the update k^T (lr G) an outer product. Memory-bound: W and acc are read
and written once per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .. import _mosaic_gpu as mg
from .gpu_forward import GPUTileSpec, _smem, colb, ln_l2_grad, ln_stats, rowb


def decode(ts: GPUTileSpec, q, k, v, lr, s_pos, done, ln_scale, ln_bias, w, b, acc_w, acc_b):
    """q, k, v, ln_* [N, F]; lr [N]; s_pos, done scalars (done: 1.0 at the mini-batch's last token);
    w, acc_w [N, F, F]; b, acc_b [N, F]; float32. Returns z [N, F] and the new (w, b, acc_w, acc_b)."""
    g = mg.plgpu()
    N, F = q.shape
    eps = ts.eps
    row_vec, col_vec, _ = mg.layout_fns(ts.interpret)
    f32 = jnp.float32
    sq = (F, F)

    def body(q_ref, k_ref, v_ref, lr_ref, sd_ref, lns_ref, lnb_ref, w_ref, b_ref, aw_ref, ab_ref,
             z_out, w_out, b_out, aw_out, ab_out,
             w_s, aw_s, q_s, k_s, v_s, lr_s, s_s, d_s, lns_s, lnb_s, b_s, ab_s, z_s, bars):
        n = lax.axis_index("n")
        mat = pl.ds(n * F, F)
        copies = ((w_ref.at[mat], w_s), (aw_ref.at[mat], aw_s), (q_ref.at[n], q_s), (k_ref.at[n], k_s),
                  (v_ref.at[n], v_s), (lr_ref.at[n], lr_s), (sd_ref.at[0], s_s), (sd_ref.at[1], d_s),
                  (lns_ref.at[n], lns_s), (lnb_ref.at[n], lnb_s), (b_ref.at[n], b_s), (ab_ref.at[n], ab_s))
        for i, (src, dst) in enumerate(copies):
            g.copy_gmem_to_smem(src, dst, bars.at[i])
        for i in range(len(copies)):
            g.barrier_wait(bars.at[i])
        tile = lambda ref: colb(col_vec(ref[...]), sq)  # X[i, j] = x_j
        vec = lambda t: t.sum(axis=0) * (1.0 / F)  # back to the vector (all rows equal)
        wt, awt = w_s[...], aw_s[...]
        k_rows = rowb(row_vec(k_s[...]), sq)  # K[i, j] = k_i
        q_rows = rowb(row_vec(q_s[...]), sq)
        gamma, beta, lr_t, s_t, d_t = tile(lns_s), tile(lnb_s), tile(lr_s), tile(s_s), tile(d_s)
        b_c, ab_c = col_vec(b_s[...]), col_vec(ab_s[...])
        z1 = colb((k_rows * wt).sum(axis=0) + b_c, sq)
        gr, _, _, _ = ln_l2_grad(z1, tile(v_s) - tile(k_s), gamma, beta, F, eps)
        lg = lr_t * gr
        awt = awt + k_rows * lg
        ab_c = ab_c + vec(lg)
        cur_w = wt - s_t * awt
        cur_b = colb(b_c, sq) - s_t * colb(ab_c, sq)
        out = colb((q_rows * cur_w).sum(axis=0), sq) + cur_b
        xh, _ = ln_stats(out, F, eps)
        z_s[...] = vec(tile(q_s) + xh * gamma + beta)
        fin = d_t > 0.5
        g.commit_smem()  # a warpgroup barrier: every thread has read b_s, ab_s before they are overwritten
        w_s[...] = jnp.where(fin, cur_w, wt)
        aw_s[...] = jnp.where(fin, 0.0, awt)
        b_s[...] = vec(jnp.where(fin, cur_b, colb(b_c, sq)))
        ab_s[...] = vec(jnp.where(fin, 0.0, colb(ab_c, sq)))
        g.commit_smem()
        for src, dst in ((z_s, z_out.at[n]), (w_s, w_out.at[mat]), (aw_s, aw_out.at[mat]), (b_s, b_out.at[n]),
                         (ab_s, ab_out.at[n])):
            g.copy_smem_to_gmem(src, dst)
        g.wait_smem_to_gmem(0)

    vecs = [_smem((F,), f32) for _ in range(10)]  # q k v lr s done lns lnb b acc_b
    scratch = [_smem(sq, f32), _smem(sq, f32), *vecs, _smem((F,), f32), g.Barrier(num_barriers=12)]
    row = jax.ShapeDtypeStruct((N, F), f32)
    mats = jax.ShapeDtypeStruct((N * F, F), f32)
    kern = g.kernel(body, out_type=(row, mats, row, mats, row), grid=(N,), grid_names=("n",),
                    scratch_types=scratch, interpret=mg.interpret_params(ts.interpret, ts.detect_races))
    bc = lambda x: jnp.broadcast_to(jnp.asarray(x, f32), (F,))
    sd = jnp.stack([bc(s_pos), bc(done)])
    z, w2, b2, aw2, ab2 = kern(q, k, v, jnp.broadcast_to(lr[:, None], (N, F)), sd, ln_scale, ln_bias,
                               w.reshape(N * F, F), b, acc_w.reshape(N * F, F), acc_b)
    return z, w2.reshape(N, F, F), b2, aw2.reshape(N, F, F), ab2
