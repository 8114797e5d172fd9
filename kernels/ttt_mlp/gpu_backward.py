"""Mosaic GPU (Hopper) backward kernel of TTT-MLP (F = 64, hidden 4F = 256): reverse sweep, recomputation.

One program (one warpgroup) per sequence walks its 64-token tiles last to first, as the TTT-Linear
backward does (kernels/ttt_linear/gpu_backward.py), with the hidden dimension in C = 4 chunks of 64
(the forward kernel's layout, kernels/ttt_mlp/gpu_forward.py). Shared memory cannot hold the float32
weights (128 KiB) and a float32 dL/dW carry (128 KiB) at once, so:

- the dL/dW carry lives in GLOBAL memory, in the kernel's own dW outputs (initialised with dL/dW_end):
  each mini-batch reads and writes it back one 64 x 64 chunk at a time by TMA (two round trips per
  mini-batch: the commit terms need dW at the mini-batch end, and the dZ2 terms come last); db1 (by
  chunk), db2 and the LN gradients stay on chip;
- a tile runs in two `pl.run_scoped` phases whose shared memory overlaps: (1) recomputation: the
  float32 weights from the forward's saved tile boundary, advanced mini-batch by mini-batch, their
  operand-dtype copies (and b1, b2) at every mini-batch start written to a per-program stash in global
  memory (extra kernel outputs, dropped by the caller); (2) the reverse sweep over the tile's
  mini-batches: each loads its start weights (64 KiB in the operand dtype) from the stash and runs
  the hand-written VJP below. The mini-batches of a tile and every pass over the hidden chunks are
  `lax.fori_loop`s (one copy of the code whatever K is).

Shared memory at F = 64, bfloat16 operands: 229,472 of 232,448 bytes (the CUDA lowering's own count):
static q, k, dz, P1 tiles (32 KiB) + vectors (b1 and b2 as [5, 64] twice, db1 as [4, 64]: 6 KiB aligned) +
max(recomputation: float32 W1, W2 128 KiB + six 8 KiB tiles; sweep: W1, W2 bf16 64 KiB + two
float32 carry chunks 32 KiB + seven 8 KiB tiles; outputs: three float32 tiles 48 KiB).
Global-memory traffic per mini-batch and sequence beyond the forward's: the stash (64 KiB written,
64 KiB read) and the carry (2 x 128 KiB read + 2 x 128 KiB written), L2-resident at the benchmark shape.

Per mini-batch (rows of one mini-batch selected by masks inside the 64-row tile; chunk c of the
hidden dimension; G2 = LN-grad(Z2, v - k), Gl = lr G, sK = s_K, P1 = (q k^T + 1) * causal mask):

    forward   Z1_c = k W1_c + b1_c;  X2_c = gelu(Z1_c);  Z2 = sum_c X2_c W2_c + b2
              H1_c = Gl2 W2_c^T;  Gl1_c = H1_c gelu'(Z1_c);  Zb1_c = q W1_c + b1_c - s P1 Gl1_c
              Y_c = gelu(Zb1_c);  A2 = (sum_c Y_c X2_c^T + 1) * mask;  Zb2 = sum_c Y_c W2_c + b2 - s A2 Gl2
    phase B   dZb2 = LN'(Zb2)^T (gamma dz);  dA2 = (-s dZb2) Gl2^T * mask;  dGl2 = A2^T (-s dZb2)
    phase C   dY_c = dZb2 W2_c^T + dA2 X2_c;  dZb1_c = dY_c gelu'(Zb1_c);  dW1_c += q^T dZb1_c
              dGl1_c = P1^T (-s dZb1_c) - sK (k dW1'_c + db1'_c);  dk -= sK Gl1_c dW1'_c^T
              dH_c = dGl1_c gelu'(Z1_c);  dGl2 += dH_c W2_c;  dW2_c += Y_c^T dZb2 + dH_c^T Gl2
              dZ1_c = (dA2^T Y_c - sK Gl2 dW2'_c^T) gelu'(Z1_c) + dGl1_c H1_c gelu''(Z1_c)  (k, W1 terms)
    then      dGl2 -= sK (sum_c X2_c dW2'_c + db2');  dlr = rowsum(dGl2 G2);  dZ2 = LN-grad backward(lr dGl2)
    phase D   dW2_c += X2_c^T dZ2;  dZ1_c = (dZ2 W2_c^T) gelu'(Z1_c);  dk += dZ1_c W1_c^T;  dW1_c += k^T dZ1_c
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .. import _mosaic_gpu as mg
from ..ttt_linear.gpu_forward import (TILE, GPUTileSpec, _smem, colb, ln_l2_grad, ln_l2_grad_vjp, ln_stats, matmul,
                                     rowb, stage_store, transposer)
from .gpu_forward import HC, gelu, gelu_grad

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715
N_BARRIERS = 12


def gelu_grad2(x):
    """d^2 gelu_tanh(x) / dx^2."""
    t = jnp.tanh(_C * (x + _A * x * x * x))
    u1 = _C * (1.0 + 3 * _A * x * x)
    return (1.0 - t * t) * (u1 + 0.5 * x * (6 * _C * _A * x - 2.0 * t * u1 * u1))


def backward(ts: GPUTileSpec, q, k, v, dz, lr, s_tile, s_last, w1b, b1b, w2b, b2b, ln_scale, ln_bias,
             dw1e, db1e, dw2e, db2e):
    """q, k, v, dz [N, T, F] (operand dtype; T % TILE == 0); lr [N, T]; s_tile [TILE] (row factors tiled);
    s_last [F] (s_K repeated); the forward's tile-start states w1b [N, n_tiles, F, 4F], b1b [N, n_tiles, 4F],
    w2b [N, n_tiles, 4F, F], b2b [N, n_tiles, F]; ln_* [N, F]; the final-state cotangents dw1e [N, F, 4F],
    db1e [N, 4F], dw2e [N, 4F, F], db2e [N, F] (float32).

    Returns dq, dk, dv [N, T, F] float32; per-token rows dlr, ds, dsk [N, T] (d of lr, of the row factor
    at the token, and the token's share of d s_K); (dw1, db1, dw2, db2) at the sequence start; dgamma,
    dbeta [N, F].
    """
    g = mg.plgpu()
    N, T, F = q.shape
    Hd = w1b.shape[-1]
    if F != TILE or Hd != 4 * F:
        raise ValueError(f"head width F={F}, hidden {Hd}: the Mosaic GPU ttt_mlp backward kernel takes F = {TILE}, "
                         f"hidden 4F")
    C = Hd // HC
    K, eps, op = ts.K, ts.eps, ts.op
    n_tiles = T // TILE
    n_sub = TILE // K
    row_vec, col_vec, full = mg.layout_fns(ts.interpret)
    tr = transposer(ts.interpret)
    f32 = jnp.float32
    shp = hshp = tt = (TILE, F)  # F == HC == TILE: every tile is 64 x 64

    def body(q_ref, k_ref, v_ref, dz_ref, lr_ref, s_ref, sk_ref, w1b_ref, b1b_ref, w2b_ref, b2b_ref, lns_ref,
             lnb_ref, dw1e_ref, db1e_ref, dw2e_ref, db2e_ref,
             dq_ref, dk_ref, dv_ref, dlr_ref, ds_ref, dsk_ref, dw1_ref, db1_ref, dw2_ref, db2_ref, dgam_ref,
             dbet_ref, stash_ref, b1stash_ref,
             q_s, k_s, dz_s, p_s, lr_s, s_s, sk_s, lns_s, lnb_s, b2_s, r1_s, r2_s, r3_s, b1_s, b1m_s, db1_s, bars,
             *tscr):
        n = lax.axis_index("n")
        sc = tscr[0] if tscr else None  # interpreter-only transpose scratch
        t_ = lambda ref: tr(ref, sc)
        # row offsets of 64-row chunks in the flattened [rows, 64] arrays
        w1_rows = lambda c, t=None: pl.ds(((n if t is None else n * n_tiles + t) * C + c) * F, F)
        w2_rows = lambda c, t=None: pl.ds(((n if t is None else n * n_tiles + t) * C + c) * HC, HC)
        stash_rows = lambda m, j: pl.ds(((n * n_sub + m) * 2 * C + j) * F, F)
        b1_rows = lambda i: pl.ds(i * C, C)  # the C chunks of a b1 vector stored as [C, HC] rows
        bst_rows = lambda m: pl.ds((n * n_sub + m) * (C + 1), C + 1)  # stash slot m: b1 chunks, then b2 (F == HC)

        def load(pairs):
            for i, (src, dst) in enumerate(pairs):
                g.copy_gmem_to_smem(src, dst, bars.at[i])
            for i in range(len(pairs)):
                g.barrier_wait(bars.at[i])

        def chunks(fn, init):
            """lax.fori_loop over the C hidden chunks (one copy of the chunk code, not C)."""
            return lax.fori_loop(0, C, fn, init)

        # -- sequence start: constants, the db carry, and the dW carry (GMEM) <- dW_end ------------------
        load([(lns_ref.at[n], lns_s), (lnb_ref.at[n], lnb_s), (s_ref, s_s), (sk_ref, sk_s), (db2e_ref.at[n], b2_s),
              (db1e_ref.at[b1_rows(n)], db1_s)])
        gam_v, bet_v = col_vec(lns_s[...]), col_vec(lnb_s[...])
        db2_0 = col_vec(b2_s[...])

        def init_carry(st):
            def one(c, carry):
                for src, dst, rows in ((dw1e_ref, dw1_ref, w1_rows(c)), (dw2e_ref, dw2_ref, w2_rows(c))):
                    load([(src.at[rows], st)])
                    g.copy_smem_to_gmem(st, dst.at[rows])
                    g.wait_smem_to_gmem(0)
                return carry

            chunks(one, 0)

        pl.run_scoped(init_carry, _smem(shp, f32))

        def tile(i, carry):
            db2, dgam, dbet = carry
            t = n_tiles - 1 - i
            rows = pl.ds(n * T + t * TILE, TILE)
            g.wait_smem_to_gmem(0)  # the previous tile's row outputs have left r*_s
            load([(q_ref.at[rows], q_s), (k_ref.at[rows], k_s), (dz_ref.at[rows], dz_s),
                  (lr_ref.at[n, pl.ds(t * TILE, TILE)], lr_s), (b2b_ref.at[n, t], b2_s),
                  (b1b_ref.at[b1_rows(n * n_tiles + t)], b1_s.at[pl.ds(0, C)])])

            gamma, beta = colb(gam_v, shp), colb(bet_v, shp)
            sk_f = colb(col_vec(sk_s[...]), shp)  # s_K everywhere
            s_row = rowb(row_vec(s_s[...]), shp)
            lr_row = rowb(row_vec(lr_s[...]), shp)
            ri = full(lax.broadcasted_iota(jnp.int32, tt, 0))
            ci = full(lax.broadcasted_iota(jnp.int32, tt, 1))
            rf = full(lax.broadcasted_iota(jnp.int32, shp, 0))
            mask = None
            for m in range(n_sub):
                blk = (ri >= m * K) & (ri < (m + 1) * K) & (ci >= m * K) & (ci < (m + 1) * K)
                mask = blk if mask is None else mask | blk
            mask = mask & (ci <= ri)
            p_s[...] = jnp.where(mask, matmul(q_s, t_(k_s), tt) + 1.0, 0.0).astype(op)
            g.commit_smem()
            in_mb = lambda m: (rf >= m * K) & (rf < (m + 1) * K)  # the rows of mini-batch m (m may be traced)
            b1_s[C] = col_vec(b2_s[...])  # b1_s rows: b1 by chunk, then b2
            g.commit_smem()
            zero = full(jnp.zeros(shp, f32))
            zero_row = row_vec(jnp.zeros((TILE,), f32))

            # -- phase 1: recompute the weights at every mini-batch start; stash them (operand dtype) ------
            def recompute(w1_32, w2_32, w1c, w2c, x2_s, gl1_s, gl2_s, v_s):
                load([(w1b_ref.at[w1_rows(c, t)], w1_32.at[c]) for c in range(C)]
                     + [(w2b_ref.at[w2_rows(c, t)], w2_32.at[c]) for c in range(C)] + [(v_ref.at[rows], v_s)])
                target = v_s[...].astype(f32) - k_s[...].astype(f32)
                b1c = lambda c: colb(col_vec(b1_s[c]), hshp)

                def stage(c, m=None):
                    g.wait_smem_to_gmem(0, wait_read_only=True)  # earlier stash copies have read w1c, w2c, b1_s
                    w1c[...] = w1_32[c].astype(op)
                    w2c[...] = w2_32[c].astype(op)
                    g.commit_smem()
                    if m is not None:
                        g.copy_smem_to_gmem(w1c, stash_ref.at[stash_rows(m, c)])
                        g.copy_smem_to_gmem(w2c, stash_ref.at[stash_rows(m, C + c)])

                def advance(m, carry):
                    """Stash the weights at the start of mini-batch m, then apply its update."""
                    g.copy_smem_to_gmem(b1_s, b1stash_ref.at[bst_rows(m)])
                    b2 = col_vec(b1_s[C])

                    def pass1(c, z2):
                        stage(c, m)
                        x2_s[...] = gelu(matmul(k_s, w1c, hshp) + b1c(c)).astype(op)
                        g.commit_smem()
                        return z2 + matmul(x2_s, w2c, shp)

                    z2 = chunks(pass1, full(colb(b2, shp)))
                    gr, _, _, _ = ln_l2_grad(z2, target, gamma, beta, F, eps)
                    gl2 = lr_row * jnp.where(in_mb(m), gr, 0.0)
                    gl2_s[...] = gl2.astype(op)

                    def pass2(c, carry):
                        stage(c)  # also: the b1 stash copy above has read b1_s
                        b1v = b1c(c)
                        z1 = matmul(k_s, w1c, hshp) + b1v
                        x2_s[...] = gelu(z1).astype(op)
                        gl1 = matmul(gl2_s, t_(w2c), hshp) * gelu_grad(z1)
                        gl1_s[...] = gl1.astype(op)
                        g.commit_smem()
                        w1_32[c] = w1_32[c] - sk_f * matmul(t_(k_s), gl1_s, (F, HC))
                        b1_s[c] = col_vec(b1_s[c]) - (sk_f * gl1).sum(axis=0)
                        w2_32[c] = w2_32[c] - sk_f * matmul(t_(x2_s), gl2_s, (HC, F))
                        g.commit_smem()
                        return carry

                    chunks(pass2, 0)
                    b1_s[C] = b2 - (sk_f * gl2).sum(axis=0)
                    g.commit_smem()
                    return carry

                lax.fori_loop(0, n_sub - 1, advance, 0)
                g.copy_smem_to_gmem(b1_s, b1stash_ref.at[bst_rows(n_sub - 1)])  # the last mini-batch: stash only
                chunks(lambda c, carry: (stage(c, n_sub - 1), carry)[1], 0)
                g.wait_smem_to_gmem(0)  # the stash is in global memory before the sweep reads it
                return target

            target = pl.run_scoped(
                recompute, g.SMEM((C, F, HC), f32, **mg.swizzled(f32, (F, HC))),
                g.SMEM((C, HC, F), f32, **mg.swizzled(f32, (HC, F))), *[_smem(shp, op) for _ in range(6)])

            # -- phase 2: the reverse sweep over the tile's mini-batches ----------------------------------
            def sweep(wop, st1, st2, gl2_s, dzb2_s, da2_s, t1, t2, t3, tdw, db2=db2, dgam=dgam, dbet=dbet):
                W1 = lambda c: wop.at[c]
                W2 = lambda c: wop.at[C + c]

                def carry_chunk(c):
                    """Start the TMA reads of chunk c of the dW carry (dW1 -> st1: barrier 0, dW2 -> st2: 1)."""
                    g.copy_gmem_to_smem(dw1_ref.at[w1_rows(c)], st1, bars.at[0])
                    g.copy_gmem_to_smem(dw2_ref.at[w2_rows(c)], st2, bars.at[1])

                def store_chunk(c):
                    g.commit_smem()
                    g.copy_smem_to_gmem(st1, dw1_ref.at[w1_rows(c)])
                    g.copy_smem_to_gmem(st2, dw2_ref.at[w2_rows(c)])
                    g.wait_smem_to_gmem(0)  # complete: the next read of this chunk is a TMA load

                def minibatch(j, carry):
                    dq, dk, dv, dlr, ds, dsk, db2, dgam, dbet = carry
                    m = n_sub - 1 - j
                    in_m = in_mb(m)
                    load([(stash_ref.at[stash_rows(m, i)], wop.at[i]) for i in range(2 * C)]
                         + [(b1stash_ref.at[bst_rows(m)], b1m_s)])
                    b1c = lambda c: colb(col_vec(b1m_s[c]), hshp)
                    b2m = col_vec(b1m_s[C])

                    def z1_of(c):
                        return matmul(k_s, W1(c), hshp) + b1c(c)

                    def forward_chunk(c, gl2_s=gl2_s):
                        """Z1_c, H1_c, Gl1_c, P1 Gl1_c, Zb1_c; leaves X2_c in t1, Gl1_c in t2, Y_c in t3."""
                        z1 = z1_of(c)
                        t1[...] = gelu(z1).astype(op)
                        h1 = matmul(gl2_s, t_(W2(c)), hshp)
                        gl1 = h1 * gelu_grad(z1)
                        t2[...] = gl1.astype(op)
                        g.commit_smem()
                        pg1 = matmul(p_s, t2, hshp)
                        zb1 = matmul(q_s, W1(c), hshp) + b1c(c) - s_row * pg1
                        t3[...] = gelu(zb1).astype(op)
                        g.commit_smem()
                        return z1, h1, gl1, pg1, zb1

                    # phase A: Z2 and G2 at the mini-batch's start weights
                    def phase_a(c, z2):
                        t1[...] = gelu(z1_of(c)).astype(op)
                        g.commit_smem()
                        return z2 + matmul(t1, W2(c), shp)

                    z2 = chunks(phase_a, full(colb(b2m, shp)))
                    gr, xh, inv_std, gh = ln_l2_grad(z2, target, gamma, beta, F, eps)
                    gr = jnp.where(in_m, gr, 0.0)
                    gl2 = lr_row * gr
                    gl2_s[...] = gl2.astype(op)
                    g.commit_smem()

                    # phase B: the output path (Zb1, Y, A2, Zb2) and its backward through the output LN
                    def phase_b(c, carry):
                        a2, zb2 = carry
                        forward_chunk(c)
                        return a2 + matmul(t3, t_(t1), tt), zb2 + matmul(t3, W2(c), shp)

                    a2, zb2 = chunks(phase_b, (zero, full(colb(b2m, shp))))
                    t1[...] = jnp.where(mask, a2 + 1.0, 0.0).astype(op)  # A2 (masked)
                    g.commit_smem()
                    pg2 = matmul(t1, gl2_s, shp)
                    zb2 = zb2 - s_row * pg2
                    yh, inv2 = ln_stats(zb2, F, eps)
                    dzm = jnp.where(in_m, dz_s[...].astype(f32), 0.0)
                    dgam = dgam + (dzm * yh).sum(axis=0)
                    dbet = dbet + dzm.sum(axis=0)
                    dq = dq + dzm
                    dyh = dzm * gamma
                    dzb2 = rowb(inv2, shp) * (dyh - rowb(dyh.sum(axis=1) / F, shp)
                                              - yh * rowb((dyh * yh).sum(axis=1) / F, shp))
                    ds_m = -(dzb2 * pg2).sum(axis=1)
                    dzb2_s[...] = dzb2.astype(op)
                    t2[...] = (-s_row * dzb2).astype(op)  # dPG2
                    g.commit_smem()
                    da2_s[...] = jnp.where(mask, matmul(t2, t_(gl2_s), tt), 0.0).astype(op)
                    dgl2 = matmul(t_(t1), t2, shp)  # A2^T dPG2
                    g.commit_smem()
                    db2_end = db2  # db2' (at the mini-batch end)
                    db2 = db2 + dzb2.sum(axis=0)
                    dgl2_cm = jnp.where(in_m, -colb(db2_end, shp), 0.0)  # -(sum_c X2_c dW2'_c + db2'), rows of m

                    # phase C: per chunk, dY, dZb1, the commit terms with dW' (read from GMEM), dH, dZ1 (part)
                    def phase_c(c, carry):
                        dq, dk, da1, dgl2, dgl2_cm, ds_m, dsk_m = carry
                        carry_chunk(c)  # in flight during the chunk's forward recomputation
                        z1, h1, gl1, pg1, zb1 = forward_chunk(c)
                        g.barrier_wait(bars.at[0])
                        tdw[...] = st1[...].astype(op)  # dW1'_c
                        dy = matmul(dzb2_s, t_(W2(c)), hshp) + matmul(da2_s, t1, hshp)
                        dw2inc = matmul(t_(t3), dzb2_s, (HC, F))  # Y_c^T dZb2
                        dx2 = matmul(t_(da2_s), t3, hshp)  # dA2^T Y_c
                        dzb1 = dy * gelu_grad(zb1)
                        ds_m = ds_m - (dzb1 * pg1).sum(axis=1)
                        t3[...] = dzb1.astype(op)
                        g.commit_smem()
                        dq = dq + matmul(t3, t_(W1(c)), shp)
                        dw1inc = matmul(t_(q_s), t3, (F, HC))
                        da1 = da1 - s_row * matmul(t3, t_(t2), tt)
                        db1_end = col_vec(db1_s[c])  # db1'_c
                        t3[...] = (-s_row * dzb1).astype(op)  # dPG1_c
                        g.commit_smem()
                        dgl1 = matmul(t_(p_s), t3, hshp)
                        dgl1_cm = jnp.where(in_m, -(matmul(k_s, tdw, hshp) + colb(db1_end, hshp)), 0.0)
                        dsk_m = dsk_m + (gl1 * dgl1_cm).sum(axis=1)
                        dk = dk - sk_f * matmul(t2, t_(tdw), shp)
                        dgl1 = dgl1 + sk_f * dgl1_cm
                        g.barrier_wait(bars.at[1])
                        tdw[...] = st2[...].astype(op)  # dW2'_c
                        g.commit_smem()
                        dgl2_cm = dgl2_cm - jnp.where(in_m, matmul(t1, tdw, shp), 0.0)
                        dx2 = dx2 - sk_f * matmul(gl2_s, t_(tdw), hshp)
                        gz1 = gelu_grad(z1)
                        t3[...] = (dgl1 * gz1).astype(op)  # dH_c
                        g.commit_smem()
                        dgl2 = dgl2 + matmul(t3, W2(c), shp)
                        dw2inc = dw2inc + matmul(t_(t3), gl2_s, (HC, F))
                        dz1 = dgl1 * h1 * gelu_grad2(z1) + dx2 * gz1
                        t2[...] = dz1.astype(op)
                        g.commit_smem()
                        dk = dk + matmul(t2, t_(W1(c)), shp)
                        dw1inc = dw1inc + matmul(t_(k_s), t2, (F, HC))
                        db1_s[c] = db1_end + dzb1.sum(axis=0) + dz1.sum(axis=0)
                        st1[...] = st1[...] + dw1inc
                        st2[...] = st2[...] + dw2inc
                        store_chunk(c)
                        return dq, dk, da1, dgl2, dgl2_cm, ds_m, dsk_m

                    dq, dk, da1, dgl2, dgl2_cm, ds_m, dsk_m = chunks(
                        phase_c, (full(dq), full(dk), zero, full(dgl2), full(dgl2_cm), ds_m, zero_row))
                    t1[...] = jnp.where(mask, da1, 0.0).astype(op)  # dA1
                    g.commit_smem()
                    dq = dq + matmul(t1, k_s, shp)
                    dk = dk + matmul(t_(t1), q_s, shp)
                    dsk_m = dsk_m + (gl2 * dgl2_cm).sum(axis=1)
                    dgl2 = dgl2 + sk_f * dgl2_cm
                    dlr_m = (dgl2 * gr).sum(axis=1)
                    # through G2 = LN-grad(Z2, v - k) (second order)
                    dg = lr_row * dgl2
                    dz2, dtg, dgam_m, dbet_m = ln_l2_grad_vjp(dg, gr, xh, inv_std, gh, target, gamma, beta, F)
                    dgam, dbet = dgam + dgam_m, dbet + dbet_m
                    dk = dk - dtg
                    dv = dv + dtg
                    db2 = db2 + dz2.sum(axis=0)
                    dzb2_s[...] = dz2.astype(op)  # dZ2 from here on
                    g.commit_smem()

                    # phase D: the dZ2 terms, per chunk
                    def phase_d(c, dk):
                        carry_chunk(c)
                        z1 = z1_of(c)
                        t1[...] = gelu(z1).astype(op)
                        g.commit_smem()
                        dw2inc = matmul(t_(t1), dzb2_s, (HC, F))
                        dz1 = matmul(dzb2_s, t_(W2(c)), hshp) * gelu_grad(z1)
                        t2[...] = dz1.astype(op)
                        g.commit_smem()
                        dk = dk + matmul(t2, t_(W1(c)), shp)
                        dw1inc = matmul(t_(k_s), t2, (F, HC))
                        db1_s[c] = col_vec(db1_s[c]) + dz1.sum(axis=0)
                        g.barrier_wait(bars.at[0])
                        g.barrier_wait(bars.at[1])
                        st1[...] = st1[...] + dw1inc
                        st2[...] = st2[...] + dw2inc
                        store_chunk(c)
                        return dk

                    dk = chunks(phase_d, full(dk))
                    return (full(dq), full(dk), full(dv), row_vec(dlr + dlr_m), row_vec(ds + ds_m),
                            row_vec(dsk + dsk_m), col_vec(db2), col_vec(dgam), col_vec(dbet))

                return lax.fori_loop(0, n_sub, minibatch,
                                     (zero, zero, zero, zero_row, zero_row, zero_row, db2, dgam, dbet))

            dq, dk, dv, dlr, ds, dsk, db2, dgam, dbet = pl.run_scoped(
                sweep, g.SMEM((2 * C, F, HC), op, **mg.swizzled(op, (F, HC))), _smem(shp, f32), _smem(shp, f32),
                *[_smem(shp, op) for _ in range(7)])

            # -- outputs of the tile ----------------------------------------------------------------------
            def write(o1, o2, o3):
                toks = pl.ds(t * TILE, TILE)
                stage_store([(dq, o1, dq_ref.at[rows]), (dk, o2, dk_ref.at[rows]), (dv, o3, dv_ref.at[rows]),
                             (dlr, r1_s, dlr_ref.at[n, toks]), (ds, r2_s, ds_ref.at[n, toks]),
                             (dsk, r3_s, dsk_ref.at[n, toks])])
                g.wait_smem_to_gmem(0, wait_read_only=True)  # o*_s are released at the end of this scope

            pl.run_scoped(write, *[_smem(shp, f32) for _ in range(3)])
            return db2, dgam, dbet

        zero_col = gam_v * 0.0
        db2, dgam, dbet = lax.fori_loop(0, n_tiles, tile, (db2_0, zero_col, zero_col))
        g.wait_smem_to_gmem(0)
        stage_store([(db2, b2_s, db2_ref.at[n]), (dgam, lns_s, dgam_ref.at[n]), (dbet, lnb_s, dbet_ref.at[n])])
        g.copy_smem_to_gmem(db1_s, db1_ref.at[b1_rows(n)])  # written before the fence above
        g.wait_smem_to_gmem(0)

    scratch = [_smem(shp, op) for _ in range(4)]  # q, k, dz, P1
    scratch += [_smem((TILE,), f32), _smem((TILE,), f32)]  # lr, s
    scratch += [_smem((F,), f32) for _ in range(4)]  # s_K, ln scale, ln bias, b2 / db2
    scratch += [_smem((TILE,), f32) for _ in range(3)]  # per-token output rows
    scratch += [g.SMEM((C + 1, HC), f32) for _ in range(2)]  # b1 by chunk and b2: recomputation, sweep
    scratch += [g.SMEM((C, HC), f32)]  # db1 carry by chunk
    scratch += [g.Barrier(num_barriers=N_BARRIERS)]
    if ts.interpret:
        scratch += [_smem(shp, op)]
    sd = jax.ShapeDtypeStruct
    row_t = sd((N, T), f32)
    out_type = ((sd((N * T, F), f32),) * 3 + (row_t,) * 3
                + (sd((N * C * F, HC), f32), sd((N * C, HC), f32), sd((N * C * HC, F), f32), sd((N, F), f32))
                + (sd((N, F), f32),) * 2 + (sd((N * n_sub * 2 * C * F, HC), op), sd((N * n_sub * (C + 1), HC), f32)))
    kern = g.kernel(body, out_type=out_type, grid=(N,), grid_names=("n",), scratch_types=scratch,
                    interpret=mg.interpret_params(ts.interpret, ts.detect_races))
    chunk1 = lambda a, lead: a.reshape(*lead, F, C, HC).swapaxes(-3, -2).reshape(-1, HC)  # W1 -> chunk-major rows
    flat = lambda a: a.reshape(N * T, F)
    outs = kern(flat(q), flat(k), flat(v), flat(dz), lr, s_tile, s_last, chunk1(w1b, (N, n_tiles)),
                b1b.reshape(-1, HC), w2b.reshape(-1, F), b2b, ln_scale, ln_bias, chunk1(dw1e, (N,)),
                db1e.reshape(-1, HC), dw2e.reshape(-1, F), db2e)
    dq, dk, dv, dlr, ds, dsk, dw1, db1, dw2, db2, dgam, dbet, _, _ = outs
    db1 = db1.reshape(N, Hd)
    un = lambda a: a.reshape(N, T, F)
    dw1 = dw1.reshape(N, C, F, HC).swapaxes(1, 2).reshape(N, F, Hd)
    return un(dq), un(dk), un(dv), dlr, ds, dsk, (dw1, db1, dw2.reshape(N, Hd, F), db2), dgam, dbet
