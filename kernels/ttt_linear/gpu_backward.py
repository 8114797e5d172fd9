"""Mosaic GPU (Hopper) backward kernel of TTT-Linear: a reverse sweep over tiles with recomputation.

One program per sequence walks its 64-token tiles (= remat groups) last to first. For a tile it
reloads the boundary state (W, b) the forward saved, recomputes the weights at each of its
64 / K mini-batch starts (stashed in shared memory in the operand dtype), then walks those
mini-batches backwards with the hand-written vector-Jacobian product of the dual form (the
LayerNorm backward of the output, the causal eta products, the commit, and the second-order
LayerNorm backward of the inner gradient G), every matrix product a `wgmma`. dL/dW is carried
in float32 shared memory, dL/db in registers. Per-token gradients of lr, s_K * lr and the row
factors come out as [N, T] rows; the caller folds them into d lr and d token_scale.

The per-mini-batch formulas (G1 = lr G, G2 = s_K lr G, P = (q k^T + 1) * causal mask):

    dZbar = LN'(Zbar)^T (gamma dz);  dW += q^T dZbar;  dq += dz + dZbar W^T + dA k
    dPG = -s dZbar;  dP = dPG G1^T;  dG1 = P^T dPG;  dA = dP * mask;  dk += dA^T q
    dG2 = -(k dW' + db');  dk -= G2 dW'^T;  dG = lr dG1 + s_K lr dG2
    (dZ1, d(v - k)) = backward of G = LN-grad(Z1, v - k);  dk += dZ1 W^T - d(v - k);  dW += k^T dZ1

Shared memory (bf16 operands; the lowering's own count, incl. 2 KiB of reduction scratch and the
1024-byte alignment of every buffer; the limit is 232,448 bytes):

- F = 64 (`backward`): 222,272 bytes. Tiles q, k, v, dz, four [64, F] temporaries, P and dA; W
  (float32) and the stash of the 64 / K per-mini-batch weights (operand dtype); the float32 dL/dW
  carry and its operand copy; dq, dk, dv accumulated in registers and staged in float32.
- F = 128 (`_backward_wide`): 227,400 bytes. That layout would need ~560 KiB, so:
  * no per-mini-batch weight stash: the recomputation keeps only G2 of the tile's mini-batches (their
    rows are disjoint, one [64, F] buffer), and W at mini-batch m is rebuilt when needed as
    W_0 - k^T (G2 rows before m) from the float32 boundary W_0, streamed from global memory in 64-row
    blocks through one float32 [64, F] staging tile (one extra wgmma per block);
  * the float32 dL/dW carry lives in global memory (in the dW_0 output, per program), updated by
    64-row blocks through the same staging tile; its operand-dtype copy stays in shared memory;
  * dq, dk, dv of a mini-batch occupy only its K rows: written out per mini-batch (K-row TMA slabs
    of the staging tile), never accumulated;
  * P is rebuilt every mini-batch so its buffer can hold dA; two [64, F] temporaries instead of four.
  Buffers: q, k, v, dz, x, y, G2 [64, F] and W_m, dW' [F, F] (operand dtype), P/dA [64, 64], the staging
  tile [64, F] float32, two vector buffers. Registers: [64, 128] float32 values are 64 registers per
  thread, so the per-mini-batch VJP at F = 128 is expected to spill (not measured: no GPU was lent).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .. import _mosaic_gpu as mg
from .gpu_forward import (TILE, GPUTileSpec, _smem, colb, ln_l2_grad, ln_l2_grad_vjp, ln_stats, matmul, rowb,
                          stage_store, transposer)


def backward(ts: GPUTileSpec, q, k, v, lr, lrl, s_tile, w_bounds, b_bounds, ln_scale, ln_bias, dz, dw_end, db_end):
    """Inputs as `gpu_forward.forward` plus its boundary states and the output cotangents
    dz [N, T, F] (operand dtype), dw_end [N, F, F], db_end [N, F].

    Returns dq, dk, dv [N, T, F] float32, per-token rows dlr, dlrl, ds [N, T] (d of lr, of
    lrl = s_K lr, of the row factor at each token), dw0 [N, F, F], db0, dgamma, dbeta [N, F].
    """
    g = mg.plgpu()
    N, T, F = q.shape
    if F == 2 * TILE:
        return _backward_wide(ts, q, k, v, lr, lrl, s_tile, w_bounds, b_bounds, ln_scale, ln_bias, dz, dw_end,
                              db_end)
    if F != TILE:
        raise ValueError(f"head width F={F}: the Mosaic GPU ttt_linear backward kernel takes F in (64, 128)")
    K, eps, op = ts.K, ts.eps, ts.op
    n_tiles = T // TILE
    n_sub = TILE // K
    row_vec, col_vec, full = mg.layout_fns(ts.interpret)
    tr = transposer(ts.interpret)
    f32 = jnp.float32
    shp = (TILE, F)

    def body(q_ref, k_ref, v_ref, dz_ref, lr_ref, lrl_ref, s_ref, wb_ref, bb_ref, lns_ref, lnb_ref, dwe_ref,
             dbe_ref,
             dq_ref, dk_ref, dv_ref, dlr_ref, dlrl_ref, ds_ref, dw0_ref, db0_ref, dgam_ref, dbet_ref,
             q_s, k_s, v_s, dz_s, p_s, g1_s, g2_s, t1_s, t2_s, da_s, w_s, w32_s, stash_s, dwc32_s, dwc_s,
             o1_s, o2_s, o3_s, lr_s, lrl_s, s_s, v1_s, v2_s, v3_s, vec_s, bars, *tscr):
        n = lax.axis_index("n")
        sc = (lambda i: tscr[i]) if tscr else (lambda i: None)  # interpreter-only transpose scratch
        g.copy_gmem_to_smem(dwe_ref.at[pl.ds(n * F, F)], dwc32_s, bars.at[0])
        g.copy_gmem_to_smem(dbe_ref.at[n], vec_s, bars.at[1])
        g.copy_gmem_to_smem(lns_ref.at[n], v1_s, bars.at[2])
        g.copy_gmem_to_smem(lnb_ref.at[n], v2_s, bars.at[3])
        g.copy_gmem_to_smem(s_ref, s_s, bars.at[4])
        for i in range(5):
            g.barrier_wait(bars.at[i])
        dbc0 = col_vec(vec_s[...])
        gam_v, bet_v = col_vec(v1_s[...]), col_vec(v2_s[...])
        zero_col = gam_v * 0.0

        def tile(i, carry):
            dbc, dgam, dbet = carry
            t = n_tiles - 1 - i
            rows = pl.ds(n * T + t * TILE, TILE)
            g.wait_smem_to_gmem(0)  # the previous tile's outputs have left o*_s, v*_s
            for j, (src, dst) in enumerate(((q_ref, q_s), (k_ref, k_s), (v_ref, v_s), (dz_ref, dz_s))):
                g.copy_gmem_to_smem(src.at[rows], dst, bars.at[j])
            g.copy_gmem_to_smem(lr_ref.at[n, pl.ds(t * TILE, TILE)], lr_s, bars.at[4])
            g.copy_gmem_to_smem(lrl_ref.at[n, pl.ds(t * TILE, TILE)], lrl_s, bars.at[5])
            g.copy_gmem_to_smem(wb_ref.at[pl.ds((n * n_tiles + t) * F, F)], w32_s, bars.at[6])
            g.copy_gmem_to_smem(bb_ref.at[n, t], vec_s, bars.at[7])
            for j in range(8):
                g.barrier_wait(bars.at[j])

            gamma, beta = colb(gam_v, shp), colb(bet_v, shp)
            s_row = rowb(row_vec(s_s[...]), shp)
            lr_row = rowb(row_vec(lr_s[...]), shp)
            lrl_row = rowb(row_vec(lrl_s[...]), shp)
            ri = full(lax.broadcasted_iota(jnp.int32, (TILE, TILE), 0))
            ci = full(lax.broadcasted_iota(jnp.int32, (TILE, TILE), 1))
            rf = full(lax.broadcasted_iota(jnp.int32, shp, 0))
            mask = None
            for m in range(n_sub):
                blk = (ri >= m * K) & (ri < (m + 1) * K) & (ci >= m * K) & (ci < (m + 1) * K)
                mask = blk if mask is None else mask | blk
            mask = mask & (ci <= ri)
            p_s[...] = jnp.where(mask, matmul(q_s, tr(k_s, sc(0)), (TILE, TILE)) + 1.0, 0.0).astype(op)
            kf = k_s[...].astype(f32)
            target = v_s[...].astype(f32) - kf

            def inner(w_ref, b, in_m):
                """G (rows of m) at weights (w_ref, b)."""
                z1 = matmul(k_s, w_ref, shp) + colb(b, shp)
                gr, xh, inv_std, gh = ln_l2_grad(z1, target, gamma, beta, F, eps)
                return jnp.where(in_m, gr, 0.0), xh, inv_std, gh

            # recompute the weights at each mini-batch start of the tile
            b = col_vec(vec_s[...])
            bs = []
            for m in range(n_sub):
                in_m = (rf >= m * K) & (rf < (m + 1) * K)
                w_m = w32_s[...]
                stash_s[m] = w_m.astype(op)
                bs.append(b)
                if m == n_sub - 1:
                    break
                g.commit_smem()
                gr, _, _, _ = inner(stash_s.at[m], b, in_m)
                g2 = lrl_row * gr
                g2_s[...] = g2.astype(op)
                g.commit_smem()
                w32_s[...] = w_m - matmul(tr(k_s, sc(0)), g2_s, (F, F))
                b = b - g2.sum(axis=0)
            g.commit_smem()

            dq = jnp.zeros(shp, f32)
            dk = jnp.zeros(shp, f32)
            dv = jnp.zeros(shp, f32)
            dlr = dlrl = dsr = None
            for m in reversed(range(n_sub)):
                in_m = (rf >= m * K) & (rf < (m + 1) * K)
                w_m, b = stash_s.at[m], bs[m]
                dwc_s[...] = dwc32_s[...].astype(op)
                gr, xh, inv_std, gh = inner(w_m, b, in_m)
                g1, g2 = lr_row * gr, lrl_row * gr
                g1_s[...] = g1.astype(op)
                g2_s[...] = g2.astype(op)
                g.commit_smem()
                pg = matmul(p_s, g1_s, shp)
                zbar = matmul(q_s, w_m, shp) + colb(b, shp) - s_row * pg
                yh, inv2 = ln_stats(zbar, F, eps)
                dzm = jnp.where(in_m, dz_s[...].astype(f32), 0.0)
                dgam = dgam + (dzm * yh).sum(axis=0)
                dbet = dbet + dzm.sum(axis=0)
                dyh = dzm * gamma
                dzbar = rowb(inv2, shp) * (dyh - rowb(dyh.sum(axis=1) / F, shp)
                                           - yh * rowb((dyh * yh).sum(axis=1) / F, shp))
                t1_s[...] = dzbar.astype(op)  # dZbar
                t2_s[...] = (-s_row * dzbar).astype(op)  # dPG
                g.commit_smem()
                dsr_m = -(dzbar * pg).sum(axis=1)
                dsr = dsr_m if dsr is None else dsr + dsr_m
                dq = dq + dzm + matmul(t1_s, tr(w_m, sc(1)), shp)
                dp = matmul(t2_s, tr(g1_s, sc(2)), (TILE, TILE))
                dg1 = matmul(tr(p_s, sc(3)), t2_s, shp)
                da_s[...] = jnp.where(mask, dp, 0.0).astype(op)
                g.commit_smem()
                dq = dq + matmul(da_s, k_s, shp)
                dk = dk + matmul(tr(da_s, sc(3)), q_s, shp)
                # through the commit W' = W - k^T G2, b' = b - colsum(G2), with the carried dW', db'
                dg2 = jnp.where(in_m, -(matmul(k_s, dwc_s, shp) + colb(dbc, shp)), 0.0)
                dk = dk - matmul(g2_s, tr(dwc_s, sc(1)), shp)
                dg = lr_row * dg1 + lrl_row * dg2
                dlr_m, dlrl_m = (dg1 * gr).sum(axis=1), (dg2 * gr).sum(axis=1)
                dlr = dlr_m if dlr is None else dlr + dlr_m
                dlrl = dlrl_m if dlrl is None else dlrl + dlrl_m
                # through G = LN-grad(Z1, v - k)
                dz1, dtg, dgam_m, dbet_m = ln_l2_grad_vjp(dg, gr, xh, inv_std, gh, target, gamma, beta, F)
                dgam, dbet = dgam + dgam_m, dbet + dbet_m
                t1_s[...] = dz1.astype(op)
                g.commit_smem()
                dk = dk + matmul(t1_s, tr(w_m, sc(1)), shp) - dtg
                dv = dv + dtg
                # dW (at the mini-batch start) = dW' + q^T dZbar + k^T dZ1
                t2_s[...] = dzbar.astype(op)
                g.commit_smem()
                dwc32_s[...] = (dwc32_s[...] + matmul(tr(q_s, sc(4)), t2_s, (F, F))
                                + matmul(tr(k_s, sc(0)), t1_s, (F, F)))
                dbc = dbc + dzbar.sum(axis=0) + dz1.sum(axis=0)

            toks = pl.ds(t * TILE, TILE)
            stage_store([(dq, o1_s, dq_ref.at[rows]), (dk, o2_s, dk_ref.at[rows]), (dv, o3_s, dv_ref.at[rows]),
                         (dlr, v1_s, dlr_ref.at[n, toks]), (dlrl, v2_s, dlrl_ref.at[n, toks]),
                         (dsr, v3_s, ds_ref.at[n, toks])])
            return dbc, dgam, dbet

        dbc, dgam, dbet = lax.fori_loop(0, n_tiles, tile, (dbc0, zero_col, zero_col))
        g.wait_smem_to_gmem(0)
        g.copy_smem_to_gmem(dwc32_s, dw0_ref.at[pl.ds(n * F, F)])
        stage_store([(dbc, vec_s, db0_ref.at[n]), (dgam, v1_s, dgam_ref.at[n]), (dbet, v2_s, dbet_ref.at[n])])
        g.wait_smem_to_gmem(0)

    t2 = (TILE, TILE)
    scratch = [_smem(shp, op) for _ in range(4)]  # q, k, v, dz
    scratch += [_smem(t2, op), _smem(shp, op), _smem(shp, op), _smem(shp, op), _smem(shp, op), _smem(t2, op)]
    scratch += [_smem((F, F), op), _smem((F, F), f32), g.SMEM((n_sub, F, F), op, **mg.swizzled(op, (F, F))),
                _smem((F, F), f32), _smem((F, F), op)]
    scratch += [_smem(shp, f32) for _ in range(3)]
    scratch += [_smem((TILE,), f32) for _ in range(3)]  # lr, lrl, s
    scratch += [_smem((F,), f32) for _ in range(4)]
    scratch += [g.Barrier(num_barriers=8)]
    if ts.interpret:
        scratch += [_smem((F, TILE), op), _smem((F, F), op), _smem((F, TILE), op), _smem(t2, op),
                    _smem((F, TILE), op)]
    return _launch(ts, body, scratch, q, k, v, lr, lrl, s_tile, w_bounds, b_bounds, ln_scale, ln_bias, dz, dw_end,
                   db_end)


def _backward_wide(ts: GPUTileSpec, q, k, v, lr, lrl, s_tile, w_bounds, b_bounds, ln_scale, ln_bias, dz, dw_end,
                   db_end):
    """F = 128 (arguments and results as `backward`): the same per-mini-batch VJP in a layout that fits
    232,448 bytes of shared memory (see the module docstring)."""
    g = mg.plgpu()
    N, T, F = q.shape
    K, eps, op = ts.K, ts.eps, ts.op
    n_tiles = T // TILE
    n_sub = TILE // K
    n_blk = F // TILE  # 64-row blocks of an F x F matrix (the f32 staging tile holds one)
    row_vec, col_vec, full = mg.layout_fns(ts.interpret)
    tr = transposer(ts.interpret)
    f32 = jnp.float32
    shp, t2 = (TILE, F), (TILE, TILE)

    def body(q_ref, k_ref, v_ref, dz_ref, lr_ref, lrl_ref, s_ref, wb_ref, bb_ref, lns_ref, lnb_ref, dwe_ref,
             dbe_ref,
             dq_ref, dk_ref, dv_ref, dlr_ref, dlrl_ref, ds_ref, dw0_ref, db0_ref, dgam_ref, dbet_ref,
             q_s, k_s, v_s, dz_s, p_s, x_s, y_s, g2_s, wm_s, dwc_s, h_s, tv_s, fv_s, bars, *tscr):
        n = lax.axis_index("n")
        # small vectors share two buffers (every scratch buffer is 1024-byte aligned)
        lr_s, lrl_s, s_s, r1_s, r2_s, r3_s = (tv_s.at[pl.ds(i * TILE, TILE)] for i in range(6))
        vec_s, lns_s, lnb_s = (fv_s.at[pl.ds(i * F, F)] for i in range(3))
        sc = (lambda i: tscr[i]) if tscr else (lambda i: None)  # interpreter-only transpose scratch
        blk = lambda h: pl.ds(h * TILE, TILE)  # rows (or columns) of block h

        def load_h(src):
            """h_s <- a [TILE, F] float32 block of global memory (after h_s's last store has left)."""
            g.wait_smem_to_gmem(0)
            g.copy_gmem_to_smem(src, h_s, bars.at[8])
            g.barrier_wait(bars.at[8])

        def store_h(val, dst, rows=None):
            """h_s <- val, then h_s (or its `rows`) -> dst in global memory (asynchronous)."""
            g.wait_smem_to_gmem(0)
            h_s[...] = val
            g.commit_smem()
            g.copy_smem_to_gmem(h_s if rows is None else h_s.at[rows], dst)

        for i, (src, dst) in enumerate(((dbe_ref.at[n], vec_s), (lns_ref.at[n], lns_s), (lnb_ref.at[n], lnb_s),
                                        (s_ref, s_s))):
            g.copy_gmem_to_smem(src, dst, bars.at[i])
        for i in range(4):
            g.barrier_wait(bars.at[i])
        dbc0 = col_vec(vec_s[...])
        gam_v, bet_v = col_vec(lns_s[...]), col_vec(lnb_s[...])
        zero_col = gam_v * 0.0
        # the dL/dW carry lives in global memory (dw0_ref, float32), its operand-dtype copy in dwc_s
        for h in range(n_blk):
            load_h(dwe_ref.at[pl.ds(n * F + h * TILE, TILE)])
            w_blk = h_s[...]
            dwc_s[blk(h), :] = w_blk.astype(op)
            store_h(w_blk, dw0_ref.at[pl.ds(n * F + h * TILE, TILE)])
        g.commit_smem()

        def tile(i, carry):
            dbc, dgam, dbet = carry
            t = n_tiles - 1 - i
            tok = n * T + t * TILE
            rows = pl.ds(tok, TILE)
            g.wait_smem_to_gmem(0)  # the previous tile's outputs have left h_s, r*_s
            for j, (src, dst) in enumerate(((q_ref, q_s), (k_ref, k_s), (v_ref, v_s), (dz_ref, dz_s))):
                g.copy_gmem_to_smem(src.at[rows], dst, bars.at[j])
            g.copy_gmem_to_smem(lr_ref.at[n, pl.ds(t * TILE, TILE)], lr_s, bars.at[4])
            g.copy_gmem_to_smem(lrl_ref.at[n, pl.ds(t * TILE, TILE)], lrl_s, bars.at[5])
            g.copy_gmem_to_smem(bb_ref.at[n, t], vec_s, bars.at[6])
            for j in range(7):
                g.barrier_wait(bars.at[j])

            gamma, beta = colb(gam_v, shp), colb(bet_v, shp)
            s_row = rowb(row_vec(s_s[...]), shp)
            lr_row = rowb(row_vec(lr_s[...]), shp)
            lrl_row = rowb(row_vec(lrl_s[...]), shp)
            ri = full(lax.broadcasted_iota(jnp.int32, t2, 0))
            ci = full(lax.broadcasted_iota(jnp.int32, t2, 1))
            rf = full(lax.broadcasted_iota(jnp.int32, shp, 0))
            mask = None
            for m in range(n_sub):
                bm = (ri >= m * K) & (ri < (m + 1) * K) & (ci >= m * K) & (ci < (m + 1) * K)
                mask = bm if mask is None else mask | bm
            mask = mask & (ci <= ri)

            def target():
                return v_s[...].astype(f32) - k_s[...].astype(f32)

            def build_w(m):
                """wm_s <- W at mini-batch m's start in the operand dtype: the tile's boundary W_0 (float32,
                global memory) minus k^T G2 of the mini-batches before m (rows < m K of g2_s)."""
                if m:
                    y_s[...] = jnp.where(rf < m * K, g2_s[...].astype(f32), 0.0).astype(op)
                    g.commit_smem()
                for h in range(n_blk):
                    load_h(wb_ref.at[pl.ds((n * n_tiles + t) * F + h * TILE, TILE)])
                    w_blk = h_s[...]
                    if m:
                        w_blk = w_blk - matmul(tr(k_s.at[:, blk(h)], sc(4)), y_s, shp)
                    wm_s[blk(h), :] = w_blk.astype(op)
                g.commit_smem()

            def inner(b, in_m):
                """G (rows of m) at weights (wm_s, b)."""
                z1 = matmul(k_s, wm_s, shp) + colb(b, shp)
                gr, xh, inv_std, gh = ln_l2_grad(z1, target(), gamma, beta, F, eps)
                return jnp.where(in_m, gr, 0.0), xh, inv_std, gh

            # recompute G2 of each mini-batch but the last (disjoint rows of g2_s) and the biases
            b = col_vec(vec_s[...])
            bs = [b]
            for m in range(n_sub - 1):
                in_m = (rf >= m * K) & (rf < (m + 1) * K)
                build_w(m)
                gr, _, _, _ = inner(b, in_m)
                g2 = lrl_row * gr
                g2_s[...] = (g2 if m == 0 else jnp.where(in_m, g2, g2_s[...].astype(f32))).astype(op)
                g.commit_smem()
                b = b - g2.sum(axis=0)
                bs.append(b)

            def emit(val, ref, m):
                """Rows of mini-batch m of a [TILE, F] result -> global memory."""
                store_h(val, ref.at[pl.ds(tok + m * K, K)], pl.ds(m * K, K))

            dlr = dlrl = dsr = None
            for m in reversed(range(n_sub)):
                in_m = (rf >= m * K) & (rf < (m + 1) * K)
                b = bs[m]
                build_w(m)
                p_s[...] = jnp.where(mask, matmul(q_s, tr(k_s, sc(0)), t2) + 1.0, 0.0).astype(op)
                gr, xh, inv_std, gh = inner(b, in_m)
                g1, g2 = lr_row * gr, lrl_row * gr
                x_s[...] = g1.astype(op)
                y_s[...] = g2.astype(op)
                g.commit_smem()
                # through the commit W' = W - k^T G2, b' = b - colsum(G2), with the carried dW' (dwc_s), db'
                dk = -matmul(y_s, tr(dwc_s, sc(1)), shp)
                dg2 = jnp.where(in_m, -(matmul(k_s, dwc_s, shp) + colb(dbc, shp)), 0.0)
                pg = matmul(p_s, x_s, shp)
                zbar = matmul(q_s, wm_s, shp) + colb(b, shp) - s_row * pg
                yh, inv2 = ln_stats(zbar, F, eps)
                dzm = jnp.where(in_m, dz_s[...].astype(f32), 0.0)
                dgam = dgam + (dzm * yh).sum(axis=0)
                dbet = dbet + dzm.sum(axis=0)
                dyh = dzm * gamma
                dzbar = rowb(inv2, shp) * (dyh - rowb(dyh.sum(axis=1) / F, shp)
                                           - yh * rowb((dyh * yh).sum(axis=1) / F, shp))
                dsr_m = -(dzbar * pg).sum(axis=1)
                dsr = dsr_m if dsr is None else dsr + dsr_m
                y_s[...] = dzbar.astype(op)
                g.commit_smem()
                dq = dzm + matmul(y_s, tr(wm_s, sc(1)), shp)
                y_s[...] = (-s_row * dzbar).astype(op)  # dPG
                g.commit_smem()
                dp = matmul(y_s, tr(x_s, sc(2)), t2)
                dg1 = matmul(tr(p_s, sc(3)), y_s, shp)
                p_s[...] = jnp.where(mask, dp, 0.0).astype(op)  # dA (P is rebuilt next mini-batch)
                g.commit_smem()
                dq = dq + matmul(p_s, k_s, shp)
                dk = dk + matmul(tr(p_s, sc(3)), q_s, shp)
                emit(dq, dq_ref, m)
                dg = lr_row * dg1 + lrl_row * dg2
                dlr_m, dlrl_m = (dg1 * gr).sum(axis=1), (dg2 * gr).sum(axis=1)
                dlr = dlr_m if dlr is None else dlr + dlr_m
                dlrl = dlrl_m if dlrl is None else dlrl + dlrl_m
                # through G = LN-grad(Z1, v - k)
                dz1, dtg, dgam_m, dbet_m = ln_l2_grad_vjp(dg, gr, xh, inv_std, gh, target(), gamma, beta, F)
                dgam, dbet = dgam + dgam_m, dbet + dbet_m
                x_s[...] = dz1.astype(op)
                y_s[...] = dzbar.astype(op)
                g.commit_smem()
                dk = dk + matmul(x_s, tr(wm_s, sc(1)), shp) - dtg
                emit(dk, dk_ref, m)
                emit(dtg, dv_ref, m)
                # dW (at the mini-batch start) = dW' + q^T dZbar + k^T dZ1, one 64-row block at a time
                for h in range(n_blk):
                    dst = dw0_ref.at[pl.ds(n * F + h * TILE, TILE)]
                    load_h(dst)
                    upd = (h_s[...] + matmul(tr(q_s.at[:, blk(h)], sc(4)), y_s, shp)
                           + matmul(tr(k_s.at[:, blk(h)], sc(5)), x_s, shp))
                    dwc_s[blk(h), :] = upd.astype(op)
                    store_h(upd, dst)
                g.commit_smem()
                dbc = dbc + dzbar.sum(axis=0) + dz1.sum(axis=0)

            toks = pl.ds(t * TILE, TILE)
            stage_store([(dlr, r1_s, dlr_ref.at[n, toks]), (dlrl, r2_s, dlrl_ref.at[n, toks]),
                         (dsr, r3_s, ds_ref.at[n, toks])])
            return dbc, dgam, dbet

        dbc, dgam, dbet = lax.fori_loop(0, n_tiles, tile, (dbc0, zero_col, zero_col))
        g.wait_smem_to_gmem(0)
        stage_store([(dbc, vec_s, db0_ref.at[n]), (dgam, lns_s, dgam_ref.at[n]), (dbet, lnb_s, dbet_ref.at[n])])
        g.wait_smem_to_gmem(0)

    scratch = [_smem(shp, op) for _ in range(4)]  # q, k, v, dz
    scratch += [_smem(t2, op), _smem(shp, op), _smem(shp, op), _smem(shp, op)]  # P / dA, x, y, G2 of the tile
    scratch += [_smem((F, F), op), _smem((F, F), op), _smem(shp, f32)]  # W_m, dW' (operand dtype), staging
    scratch += [_smem((6 * TILE,), f32), _smem((3 * F,), f32)]  # lr, lrl, s, 3 gradient rows; b, gamma, beta
    scratch += [g.Barrier(num_barriers=9)]
    if ts.interpret:
        scratch += [_smem((F, TILE), op), _smem((F, F), op), _smem((F, TILE), op), _smem(t2, op),
                    _smem(t2, op), _smem(t2, op)]
    return _launch(ts, body, scratch, q, k, v, lr, lrl, s_tile, w_bounds, b_bounds, ln_scale, ln_bias, dz, dw_end,
                   db_end)


def _launch(ts: GPUTileSpec, body, scratch, q, k, v, lr, lrl, s_tile, w_bounds, b_bounds, ln_scale, ln_bias, dz,
            dw_end, db_end):
    """One program per sequence running `body` (either layout: same operands, outputs and results as
    `backward`)."""
    g = mg.plgpu()
    N, T, F = q.shape
    f32 = jnp.float32
    row_t = jax.ShapeDtypeStruct((N, T), f32)
    out_type = (jax.ShapeDtypeStruct((N * T, F), f32),) * 3 + (row_t,) * 3 + (
        jax.ShapeDtypeStruct((N * F, F), f32),) + (jax.ShapeDtypeStruct((N, F), f32),) * 3
    kern = g.kernel(body, out_type=out_type, grid=(N,), grid_names=("n",), scratch_types=scratch,
                    interpret=mg.interpret_params(ts.interpret, ts.detect_races))
    flat = lambda a: a.reshape(N * T, F)
    outs = kern(flat(q), flat(k), flat(v), flat(dz), lr, lrl, s_tile, w_bounds.reshape(-1, F), b_bounds,
                ln_scale, ln_bias, dw_end.reshape(N * F, F), db_end)
    dq, dk, dv, dlr, dlrl, ds, dw0, db0, dgam, dbet = outs
    un = lambda a: a.reshape(N, T, F)
    return un(dq), un(dk), un(dv), dlr, dlrl, ds, dw0.reshape(N, F, F), db0, dgam, dbet
