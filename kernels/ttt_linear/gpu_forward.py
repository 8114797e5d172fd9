"""Mosaic GPU (Hopper) forward kernel of TTT-Linear: `plgpu.kernel`, `wgmma`, state on chip.

Grid: one program (one warpgroup) per sequence (N = B * H), a sequential `fori_loop` over
tiles of TILE = 64 tokens (= one remat group of 64 / K mini-batches) inside. wgmma needs
M % 64 == 0, so the K-token mini-batches are handled in 64-row tiles: the tile's inputs are
loaded once by TMA, the attention-like product A = q k^T of the whole tile is one wgmma,
and each mini-batch m of the tile runs the dual form with its rows selected by masks:

    Z1 = k W + b,  G = LN-backward(Z1, v - k),  G1 = lr * G,  G2 = s_K lr * G  (rows of m only)
    Zbar = q W + b - s * (((A + 1) * causal block mask) @ G1),  z = q + LN(Zbar)   (rows of m)
    W <- W - k^T G2,  b <- b - colsum(G2)

W is kept in float32 in shared memory (plus a copy in the wgmma operand dtype), b in float32
registers; matmul operands are `spec`'s operand dtype (bfloat16 on hardware), accumulation is
float32. Outputs: z [N, T, F] (operand dtype), the final W, b, and W, b at every tile start
(the remat-group boundaries the backward recomputes from).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from .. import _mosaic_gpu as mg

TILE = 64  # tokens per tile: wgmma's M


@dataclasses.dataclass(frozen=True)
class GPUTileSpec:
    """Static shape/dtype facts of one call (hashable)."""

    F: int
    K: int
    eps: float
    operand_dtype: str  # "bfloat16" (hardware) or "float32" (interpreter only: exact float32 check)
    interpret: bool
    detect_races: bool = False

    @property
    def op(self):
        return jnp.dtype(self.operand_dtype)


def check(F: int, K: int, operand_dtype: str, interpret: bool) -> str | None:
    """Why the Mosaic GPU TTT-Linear kernels cannot take this shape, or None."""
    if F % 64 or F > 128:
        return f"head width F={F}: the Mosaic GPU ttt_linear kernel takes F in (64, 128); use impl='xla'"
    if K < 8 or TILE % K:
        return f"mini_batch_size={K}: the Mosaic GPU ttt_linear kernel takes K in (8, 16, 32, 64); use impl='xla'"
    if operand_dtype not in ("bfloat16", "float32"):
        return f"operand_dtype={operand_dtype!r}; expected 'bfloat16' or 'float32'"
    if operand_dtype == "float32" and not interpret:
        return ("operand_dtype='float32' runs only in the interpreter (float32 wgmma needs K-major "
                "operands); use 'bfloat16' on the GPU")
    return None


def transposer(interpret: bool):
    """t(ref, scratch): ref^T as a wgmma operand; the interpreter cannot take transpose_ref there."""
    if interpret:
        def t(ref, scratch):
            scratch[...] = ref[...].T
            return scratch
        return t
    g = mg.plgpu()
    return lambda ref, scratch: g.transpose_ref(ref, (1, 0))


def matmul(a, b, shape):
    """float32 a @ b of two SMEM refs through one wgmma accumulator."""
    g = mg.plgpu()

    def body(acc):
        g.wgmma(acc, a, b)
        return acc[...]

    return pl.run_scoped(body, g.ACC(shape, jnp.float32))


def rowb(x, shape):
    return lax.broadcast_in_dim(x, shape, [0])


def colb(x, shape):
    return lax.broadcast_in_dim(x, shape, [1])


def ln_stats(z, F, eps):
    """(x_hat, inv_std) of a row-wise LayerNorm (no affine)."""
    mu = z.sum(axis=1) / F
    zc = z - rowb(mu, z.shape)
    inv_std = lax.rsqrt((zc * zc).sum(axis=1) / F + eps)
    return zc * rowb(inv_std, z.shape), inv_std


def ln_l2_grad(z, target, gamma, beta, F, eps):
    """Row-wise d/dz 1/2 ||LN(z) - target||^2 (as ttc_jax.ttt.learners.ln_l2_grad); also its pieces."""
    xh, inv_std = ln_stats(z, F, eps)
    gh = (xh * gamma + beta - target) * gamma
    s1 = rowb(gh.sum(axis=1), z.shape)
    s2 = rowb((gh * xh).sum(axis=1), z.shape)
    g = (F * gh - s1 - xh * s2) * rowb(inv_std * (1.0 / F), z.shape)
    return g, xh, inv_std, gh


def ln_l2_grad_vjp(dg, g, xh, inv_std, gh, target, gamma, beta, F):
    """Cotangents through `ln_l2_grad` (second order), given dg on its output g and its pieces:
    (dz, dtarget, dgamma, dbeta), the last two summed over rows."""
    shp = dg.shape
    inv = rowb(inv_std, shp)
    c = inv * (1.0 / F)
    dg_xh = rowb((dg * xh).sum(axis=1), shp)
    dgh = inv * dg - c * rowb(dg.sum(axis=1), shp) - c * dg_xh * xh
    dxh = -c * rowb((gh * xh).sum(axis=1), shp) * dg - c * dg_xh * gh + dgh * gamma * gamma
    tot = rowb((dxh * xh).sum(axis=1) + (dg * g).sum(axis=1), shp)
    dz = inv * (dxh - rowb(dxh.sum(axis=1) / F, shp) - xh * tot * (1.0 / F))
    return dz, -dgh * gamma, (dgh * (2.0 * xh * gamma + beta - target)).sum(axis=0), (dgh * gamma).sum(axis=0)


def stage_store(items):
    """Write each (value, shared-memory buffer, global view): all buffers, one fence, then the async copies
    in order (the caller waits on them)."""
    g = mg.plgpu()
    for value, buf, _ in items:
        buf[...] = value
    g.commit_smem()
    for _, buf, dst in items:
        g.copy_smem_to_gmem(buf, dst)


def _smem(shape, dtype):
    g = mg.plgpu()
    if len(shape) == 1:
        return g.SMEM(shape, dtype)
    return g.SMEM(shape, dtype, **mg.swizzled(dtype, shape))


def forward(ts: GPUTileSpec, q, k, v, lr, lrl, s_tile, w, b, ln_scale, ln_bias):
    """q, k, v [N, T, F] (operand dtype), lr, lrl = s_K * lr [N, T], s_tile [TILE] (row factors tiled),
    w [N, F, F], b [N, F], ln_* [N, F] (float32). T % TILE == 0.

    Returns z [N, T, F] (operand dtype), w_end [N, F, F], b_end [N, F], w_bounds [N, n_tiles, F, F],
    b_bounds [N, n_tiles, F] (state at each tile start).
    """
    g = mg.plgpu()
    N, T, F = q.shape
    K, eps, op = ts.K, ts.eps, ts.op
    n_tiles = T // TILE
    n_sub = TILE // K
    row_vec, col_vec, full = mg.layout_fns(ts.interpret)
    tr = transposer(ts.interpret)
    f32 = jnp.float32

    def body(q_ref, k_ref, v_ref, lr_ref, lrl_ref, s_ref, w_ref, b_ref, lns_ref, lnb_ref,
             z_ref, wend_ref, bend_ref, wb_ref, bb_ref,
             q_s, k_s, v_s, g_s, p_s, w_s, w32_s, o_s, lr_s, lrl_s, s_s, b_s, lns_s, lnb_s, bars, *tscr):
        n = lax.axis_index("n")
        kT_scr = tscr[0] if tscr else None
        # sequence-constant inputs
        g.copy_gmem_to_smem(w_ref.at[pl.ds(n * F, F)], w32_s, bars.at[0])
        g.copy_gmem_to_smem(b_ref.at[n], b_s, bars.at[1])
        g.copy_gmem_to_smem(lns_ref.at[n], lns_s, bars.at[2])
        g.copy_gmem_to_smem(lnb_ref.at[n], lnb_s, bars.at[3])
        g.copy_gmem_to_smem(s_ref, s_s, bars.at[4])
        for i in range(5):
            g.barrier_wait(bars.at[i])
        w_s[...] = w32_s[...].astype(op)
        g.commit_smem()
        b0 = col_vec(b_s[...])

        def tile(t, b):
            rows = pl.ds(n * T + t * TILE, TILE)
            # boundary state (what the backward recomputes from)
            b_s[...] = b
            g.commit_smem()
            g.copy_smem_to_gmem(w32_s, wb_ref.at[pl.ds((n * n_tiles + t) * F, F)])
            g.copy_smem_to_gmem(b_s, bb_ref.at[n, t])
            for i, (src, dst) in enumerate(((q_ref, q_s), (k_ref, k_s), (v_ref, v_s))):
                g.copy_gmem_to_smem(src.at[rows], dst, bars.at[i])
            g.copy_gmem_to_smem(lr_ref.at[n, pl.ds(t * TILE, TILE)], lr_s, bars.at[3])
            g.copy_gmem_to_smem(lrl_ref.at[n, pl.ds(t * TILE, TILE)], lrl_s, bars.at[4])
            for i in range(5):
                g.barrier_wait(bars.at[i])
            g.wait_smem_to_gmem(0)  # the boundary copies read w32_s, b_s; the last tile's z read o_s

            gamma = colb(col_vec(lns_s[...]), (TILE, F))
            beta = colb(col_vec(lnb_s[...]), (TILE, F))
            s_row = rowb(row_vec(s_s[...]), (TILE, F))
            lr_row = rowb(row_vec(lr_s[...]), (TILE, F))
            lrl_row = rowb(row_vec(lrl_s[...]), (TILE, F))
            ri = full(lax.broadcasted_iota(jnp.int32, (TILE, TILE), 0))
            ci = full(lax.broadcasted_iota(jnp.int32, (TILE, TILE), 1))
            rf = full(lax.broadcasted_iota(jnp.int32, (TILE, F), 0))
            same_block = None
            for m in range(n_sub):
                blk = (ri >= m * K) & (ri < (m + 1) * K) & (ci >= m * K) & (ci < (m + 1) * K)
                same_block = blk if same_block is None else same_block | blk
            a = matmul(q_s, tr(k_s, kT_scr), (TILE, TILE))
            p_s[...] = jnp.where(same_block & (ci <= ri), a + 1.0, 0.0).astype(op)
            for m in range(n_sub):
                in_m = (rf >= m * K) & (rf < (m + 1) * K)
                kf = k_s[...].astype(f32)
                z1 = matmul(k_s, w_s, (TILE, F)) + colb(b, (TILE, F))
                gr, _, _, _ = ln_l2_grad(z1, v_s[...].astype(f32) - kf, gamma, beta, F, eps)
                g_s[...] = jnp.where(in_m, lr_row * gr, 0.0).astype(op)
                g.commit_smem()
                zq = matmul(q_s, w_s, (TILE, F))
                pg = matmul(p_s, g_s, (TILE, F))
                zbar = zq + colb(b, (TILE, F)) - s_row * pg
                xh, _ = ln_stats(zbar, F, eps)
                out = q_s[...].astype(f32) + xh * gamma + beta
                prev = o_s[...].astype(f32) if m else jnp.zeros((TILE, F), f32)
                o_s[...] = jnp.where(in_m, out, prev).astype(o_s.dtype)
                # commit the mini-batch: W -= k^T G2, b -= colsum(G2)
                g2 = jnp.where(in_m, lrl_row * gr, 0.0)
                g_s[...] = g2.astype(op)
                g.commit_smem()
                dw = matmul(tr(k_s, kT_scr), g_s, (F, F))
                w_new = w32_s[...] - dw
                w32_s[...] = w_new
                w_s[...] = w_new.astype(op)
                b = b - g2.sum(axis=0)
                g.commit_smem()
            g.copy_smem_to_gmem(o_s, z_ref.at[rows])
            return b

        b = lax.fori_loop(0, n_tiles, tile, b0)
        g.wait_smem_to_gmem(0)
        b_s[...] = b
        g.commit_smem()
        g.copy_smem_to_gmem(w32_s, wend_ref.at[pl.ds(n * F, F)])
        g.copy_smem_to_gmem(b_s, bend_ref.at[n])
        g.wait_smem_to_gmem(0)

    scratch = [_smem((TILE, F), op), _smem((TILE, F), op), _smem((TILE, F), op), _smem((TILE, F), op),
               _smem((TILE, TILE), op), _smem((F, F), op), _smem((F, F), f32), _smem((TILE, F), op),
               _smem((TILE,), f32), _smem((TILE,), f32), _smem((TILE,), f32), _smem((F,), f32),
               _smem((F,), f32), _smem((F,), f32), g.Barrier(num_barriers=5)]
    if ts.interpret:
        scratch.append(_smem((F, TILE), op))
    out_type = (jax.ShapeDtypeStruct((N * T, F), op), jax.ShapeDtypeStruct((N * F, F), f32),
                jax.ShapeDtypeStruct((N, F), f32), jax.ShapeDtypeStruct((N * n_tiles * F, F), f32),
                jax.ShapeDtypeStruct((N, n_tiles, F), f32))
    kern = g.kernel(body, out_type=out_type, grid=(N,), grid_names=("n",), scratch_types=scratch,
                    interpret=mg.interpret_params(ts.interpret, ts.detect_races))
    z, w_end, b_end, w_b, b_b = kern(q.reshape(N * T, F), k.reshape(N * T, F), v.reshape(N * T, F), lr, lrl,
                                     s_tile, w.reshape(N * F, F), b, ln_scale, ln_bias)
    return (z.reshape(N, T, F), w_end.reshape(N, F, F), b_end, w_b.reshape(N, n_tiles, F, F), b_b)


