"""Mosaic GPU decode kernel of TTT-MLP (F -> 4F -> F): one token for each of N sequences.

One program (one warpgroup) per sequence; vmap-able. A decode step is matrix-vector work with
weights of their own per sequence (no shared operand, so no wgmma): plain float32 vector ops on
[64, 64] register tiles, as in kernels/ttt_linear/gpu_decode.py. The state (W1 [F, 4F],
W2 [4F, F] and their accumulators: 256 KiB float32 at F = 64) does not fit shared memory, so it
is streamed in C = 4F / 64 hidden chunks (W1[:, c], W2[c, :], A1[:, c], A2[c, :]: 64 KiB),
read by TMA straight from the [F, 4F] / [4F, F] arrays (no re-layout in XLA), in two passes:

    pass 1 (start weights):  Z1_c = k W1_c + b1_c,  X_c = gelu(Z1_c);  Z2 = sum_c X_c W2_c + b2
                             G2 = LN-backward(Z2, v - k)
    pass 2 (per chunk):      G1_c = (G2 W2_c^T) * gelu'(Z1_c)
                             A1_c += k^T (lr G1_c),  A2_c += X_c^T (lr G2),  ab1_c += lr G1_c
                             Zq2 += gelu(q W1'_c + b1'_c) W2'_c  with W' = W - s_pos A (the new A)
                             write back W_c (W'_c at the mini-batch's last token) and A_c (0 there)
    then:                    z = q + LN(Zq2 + b2'),  ab2 += lr G2

A vector x is held either as a "column" tile X[i, j] = x_j (what a reduction over axis 0 gives)
or a "row" tile X[i, j] = x_i (what a reduction over axis 1 gives); k W1_c is
sum_i (row tile of k * W1_c), G2 W2_c^T is sum_j (column tile of G2 * W2_c). Where a vector
changes role (X_c, G1_c, gelu of the output path, Z1_c between the passes) it goes through a
shared-memory vector and a warpgroup barrier (`commit_smem`) and is read back in the other layout.
The LayerNorms run on column tiles (row reductions of identical rows), as in the linear kernel.
Shared memory: the four [64, 64] float32 chunk tiles (64 KiB) and one buffer of vectors; 75,904
bytes in the lowering's count, so three programs fit an SM (228 KiB) and overlap their streams.
Bytes per token and sequence: W1, W2 read twice, A1, A2 read once, all four written (640 KiB at
F = 64); memory-bound (not measured: no GPU was lent).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .. import _mosaic_gpu as mg
from ..ttt_linear.gpu_forward import GPUTileSpec, _smem, colb, ln_l2_grad, ln_stats, rowb
from .gpu_forward import HC, gelu, gelu_grad

# offsets (in units of F) of the per-sequence F-vectors in the vector buffer
_Q, _K, _V, _LNS, _LNB, _B2, _AB2, _LR, _S, _D = range(10)


def decode(ts: GPUTileSpec, q, k, v, lr, s_pos, done, ln_scale, ln_bias, w1, b1, w2, b2, a1, ab1, a2, ab2):
    """q, k, v, ln_* [N, F]; lr [N]; s_pos, done scalars (done: 1.0 at the mini-batch's last token);
    w1, a1 [N, F, 4F]; b1, ab1 [N, 4F]; w2, a2 [N, 4F, F]; b2, ab2 [N, F]; float32, F = 64.
    Returns z [N, F] and the new (w1, b1, w2, b2, a1, ab1, a2, ab2)."""
    g = mg.plgpu()
    N, F = q.shape
    Hd = w1.shape[-1]
    if F != HC or Hd % HC:
        raise ValueError(f"head width F={F}: the Mosaic GPU ttt_mlp decode kernel takes F = {HC}")
    C = Hd // HC
    eps = ts.eps
    row_vec, col_vec, _ = mg.layout_fns(ts.interpret)
    f32 = jnp.float32
    sq = (F, HC)
    n_fv = 10
    # hidden-sized vectors after the F-vectors: b1, ab1, Z1, X (pass 1; then the output-path gelu), lr G1
    _B1, _AB1, _Z1, _X1, _G1 = (n_fv * F + i * Hd for i in range(5))

    def body(q_ref, k_ref, v_ref, lr_ref, sd_ref, lns_ref, lnb_ref, w1_ref, b1_ref, w2_ref, b2_ref, a1_ref, ab1_ref,
             a2_ref, ab2_ref,
             z_out, w1_out, b1_out, w2_out, b2_out, a1_out, ab1_out, a2_out, ab2_out,
             w1c_s, w2c_s, a1c_s, a2c_s, vb_s, bars):
        n = lax.axis_index("n")
        fv = lambda i: vb_s.at[pl.ds(i * F, F)]  # noqa: E731
        hv = lambda base, c: vb_s.at[pl.ds(base + c * HC, HC)]  # noqa: E731
        copies = [(q_ref.at[n], fv(_Q)), (k_ref.at[n], fv(_K)), (v_ref.at[n], fv(_V)), (lns_ref.at[n], fv(_LNS)),
                  (lnb_ref.at[n], fv(_LNB)), (b2_ref.at[n], fv(_B2)), (ab2_ref.at[n], fv(_AB2)),
                  (lr_ref.at[n], fv(_LR)), (sd_ref.at[0], fv(_S)), (sd_ref.at[1], fv(_D)),
                  (b1_ref.at[n], vb_s.at[pl.ds(_B1, Hd)]), (ab1_ref.at[n], vb_s.at[pl.ds(_AB1, Hd)])]
        for i, (src, dst) in enumerate(copies):
            g.copy_gmem_to_smem(src, dst, bars.at[i])
        for i in range(len(copies)):
            g.barrier_wait(bars.at[i])
        n_bar = len(copies)

        w1_rows, w2_rows = pl.ds(n * F, F), lambda c: pl.ds(n * Hd + c * HC, HC)  # noqa: E731
        cols = lambda c: pl.ds(c * HC, HC)  # noqa: E731

        def load_chunk(c, with_acc):
            g.wait_smem_to_gmem(0)  # the last chunk's write-back has left the tiles
            g.commit_smem()  # every thread is done reading the tiles before TMA overwrites them
            pairs = [(w1_ref.at[w1_rows, cols(c)], w1c_s), (w2_ref.at[w2_rows(c)], w2c_s)]
            if with_acc:
                pairs += [(a1_ref.at[w1_rows, cols(c)], a1c_s), (a2_ref.at[w2_rows(c)], a2c_s)]
            for i, (src, dst) in enumerate(pairs):
                g.copy_gmem_to_smem(src, dst, bars.at[n_bar + i])
            for i in range(len(pairs)):
                g.barrier_wait(bars.at[n_bar + i])

        col = lambda ref: col_vec(ref[...])  # noqa: E731  a vector as x_j (axis-1 index)
        row = lambda ref: row_vec(ref[...])  # noqa: E731  a vector as x_i (axis-0 index)
        ctile = lambda x: colb(x, sq)  # noqa: E731  X[i, j] = x_j
        rtile = lambda x: rowb(x, sq)  # noqa: E731  X[i, j] = x_i
        vec = lambda t: t.sum(axis=0) * (1.0 / F)  # noqa: E731  a column tile (all rows equal) -> its vector

        k_r, q_r = rtile(row(fv(_K))), rtile(row(fv(_Q)))
        gamma, beta = ctile(col(fv(_LNS))), ctile(col(fv(_LNB)))
        lr_c, s_c, d_c = col(fv(_LR)), col(fv(_S)), col(fv(_D))
        fin = d_c > 0.5

        # pass 1: the k path at the start weights (chunk loops are fori_loops: one copy of the chunk code)
        def pass1(c, z2):
            load_chunk(c, with_acc=False)
            z1 = (k_r * w1c_s[...]).sum(axis=0) + col(hv(_B1, c))
            hv(_Z1, c)[...] = z1
            hv(_X1, c)[...] = gelu(z1)
            g.commit_smem()
            return z2 + (rtile(row(hv(_X1, c))) * w2c_s[...]).sum(axis=0)

        z2 = lax.fori_loop(0, C, pass1, col(fv(_B2)))
        gr, _, _, _ = ln_l2_grad(ctile(z2), ctile(col(fv(_V))) - ctile(col(fv(_K))), gamma, beta, F, eps)
        lg2 = lr_c * vec(gr)  # lr G2
        ab2_new = col(fv(_AB2)) + lg2
        b2_cur = col(fv(_B2)) - s_c * ab2_new

        # pass 2: per chunk, the layer-1 gradient, the accumulators, the output path and the write-back
        def pass2(c, zq2):
            load_chunk(c, with_acc=True)
            w1c, w2c = w1c_s[...], w2c_s[...]
            h = (ctile(lg2) * w2c).sum(axis=1)  # (lr G2) W2_c^T, as x_i
            x_r = rtile(row(hv(_X1, c)))  # read before the barrier: its slot takes the output-path gelu below
            hv(_G1, c)[...] = h * gelu_grad(row(hv(_Z1, c)))  # lr G1_c
            g.commit_smem()
            lg1 = col(hv(_G1, c))
            a1n = a1c_s[...] + k_r * ctile(lg1)
            a2n = a2c_s[...] + x_r * ctile(lg2)
            ab1n = col(hv(_AB1, c)) + lg1
            b1c = col(hv(_B1, c))
            cur1 = w1c - ctile(s_c) * a1n
            cur2 = w2c - ctile(s_c) * a2n
            b1_cur = b1c - s_c * ab1n
            hv(_X1, c)[...] = gelu((q_r * cur1).sum(axis=0) + b1_cur)
            g.commit_smem()  # also: every thread has read b1_c, ab1_c before they are overwritten
            zq2 = zq2 + (rtile(row(hv(_X1, c))) * cur2).sum(axis=0)
            fin_t = ctile(d_c) > 0.5
            w1c_s[...] = jnp.where(fin_t, cur1, w1c)
            w2c_s[...] = jnp.where(fin_t, cur2, w2c)
            a1c_s[...] = jnp.where(fin_t, 0.0, a1n)
            a2c_s[...] = jnp.where(fin_t, 0.0, a2n)
            hv(_B1, c)[...] = jnp.where(fin, b1_cur, b1c)
            hv(_AB1, c)[...] = jnp.where(fin, 0.0, ab1n)
            g.commit_smem()
            for src, dst in ((w1c_s, w1_out.at[w1_rows, cols(c)]), (w2c_s, w2_out.at[w2_rows(c)]),
                             (a1c_s, a1_out.at[w1_rows, cols(c)]), (a2c_s, a2_out.at[w2_rows(c)])):
                g.copy_smem_to_gmem(src, dst)
            return zq2

        zq2 = lax.fori_loop(0, C, pass2, b2_cur)
        xh, _ = ln_stats(ctile(zq2), F, eps)
        z = vec(ctile(col(fv(_Q))) + xh * gamma + beta)
        b2_old = col(fv(_B2))
        g.commit_smem()  # every thread has read q, b2, ab2 before they are overwritten
        fv(_Q)[...] = z
        fv(_B2)[...] = jnp.where(fin, b2_cur, b2_old)
        fv(_AB2)[...] = jnp.where(fin, 0.0, ab2_new)
        g.commit_smem()
        for src, dst in ((fv(_Q), z_out.at[n]), (fv(_B2), b2_out.at[n]), (fv(_AB2), ab2_out.at[n]),
                         (vb_s.at[pl.ds(_B1, Hd)], b1_out.at[n]), (vb_s.at[pl.ds(_AB1, Hd)], ab1_out.at[n])):
            g.copy_smem_to_gmem(src, dst)
        g.wait_smem_to_gmem(0)

    scratch = [_smem(sq, f32), _smem((HC, F), f32), _smem(sq, f32), _smem((HC, F), f32),
               _smem((n_fv * F + 5 * Hd,), f32), g.Barrier(num_barriers=16)]
    sd = jax.ShapeDtypeStruct
    row_t, hid_t = sd((N, F), f32), sd((N, Hd), f32)
    w1_t, w2_t = sd((N * F, Hd), f32), sd((N * Hd, F), f32)
    out_type = (row_t, w1_t, hid_t, w2_t, row_t, w1_t, hid_t, w2_t, row_t)
    kern = g.kernel(body, out_type=out_type, grid=(N,), grid_names=("n",), scratch_types=scratch,
                    interpret=mg.interpret_params(ts.interpret, ts.detect_races))
    bc = lambda x: jnp.broadcast_to(jnp.asarray(x, f32), (F,))  # noqa: E731
    sdv = jnp.stack([bc(s_pos), bc(done)])
    z, w1n, b1n, w2n, b2n, a1n, ab1n, a2n, ab2n = kern(
        q, k, v, jnp.broadcast_to(lr[:, None], (N, F)), sdv, ln_scale, ln_bias, w1.reshape(N * F, Hd), b1,
        w2.reshape(N * Hd, F), b2, a1.reshape(N * F, Hd), ab1, a2.reshape(N * Hd, F), ab2)
    return (z, w1n.reshape(N, F, Hd), b1n, w2n.reshape(N, Hd, F), b2n, a1n.reshape(N, F, Hd), ab1n,
            a2n.reshape(N, Hd, F), ab2n)
