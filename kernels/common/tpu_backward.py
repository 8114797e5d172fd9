"""Mosaic TPU backward kernel: a reverse sweep over groups with recomputation.

Grid (sequence "parallel", group "arbitrary" visited last to first). Each step reloads the
group's boundary weights saved by the forward and runs its mini-batches forward once
(`minibatch_vjp.step_fwd`), keeping each one's residuals (the weight matrices at its start and
the intermediates of the dual form) in VMEM; then it walks them backwards with the hand-written
`minibatch_vjp.step_bwd`, carrying dL/dW in VMEM scratch. Per-sequence gradients of the row
factors and the inner LayerNorm are accumulated in VMEM and written once (summed over
sequences in XLA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import minibatch_vjp
from .registry import KernelSpec
from .tpu_forward import SQ, _row, compiler_params, cost_estimate, dots, interpret_arg


def backward(spec: KernelSpec, q, k, v, lr, s, ws_bounds, ln_scale, ln_bias, dz, dws_final):
    N, T, F = q.shape
    K = s.shape[0]
    group, eps = spec.group, spec.eps
    GK = group * K
    n_groups = T // GK
    n_w = len(ws_bounds)
    wshapes = [w.shape[2:] for w in ws_bounds]
    f32 = jnp.float32
    tile = lambda *sh: jax.ShapeDtypeStruct(sh, f32)
    res_shapes = jax.eval_shape(
        lambda ws, x, c, r: _stashed(minibatch_vjp.step_fwd(ws, x, x, x, c, c, r, r, eps, dots(spec))[2]),
        tuple(tile(*sh) for sh in wshapes), tile(K, F), tile(K, 1), tile(1, F))
    res_leaves, res_tree = jax.tree.flatten(res_shapes)
    n_res = len(res_leaves)

    def kernel(q_ref, k_ref, v_ref, lr_ref, s_ref, lns_ref, lnb_ref, dz_ref, *refs):
        wB_refs, refs = refs[:n_w], refs[n_w:]
        dwT_refs, refs = refs[:n_w], refs[n_w:]
        dq_ref, dk_ref, dv_ref, dlr_ref, ds_ref, dlns_ref, dlnb_ref = refs[:7]
        refs = refs[7:]
        dw0_refs, refs = refs[:n_w], refs[n_w:]
        dcarry, refs = refs[:n_w], refs[n_w:]
        stash, refs = refs[:n_res], refs[n_res:]
        ds_acc, dg_acc, db_acc = refs
        g = pl.program_id(1)

        @pl.when(g == 0)
        def _():
            for dc, dwt in zip(dcarry, dwT_refs):
                dc[...] = dwt[...]
            ds_acc[...] = jnp.zeros_like(ds_acc)
            dg_acc[...] = jnp.zeros_like(dg_acc)
            db_acc[...] = jnp.zeros_like(db_acc)

        s_, gam, bet = s_ref[...], lns_ref[...], lnb_ref[...]

        def rows(j):
            return pl.ds(pl.multiple_of(j * K, K), K)

        def forward(j, ws):
            r = rows(j)
            _, ws, res = minibatch_vjp.step_fwd(ws, q_ref[r, :], k_ref[r, :], v_ref[r, :], lr_ref[r, :], s_, gam, bet,
                                                eps, dots(spec))
            for st, a in zip(stash, jax.tree.leaves(_stashed(res))):
                st[j] = a.astype(st.dtype)
            return ws

        jax.lax.fori_loop(0, group, forward, tuple(wb[...] for wb in wB_refs))

        def sweep(jj, carry):
            dws, ds_a, dg_a, db_a = carry
            j = group - 1 - jj
            r = rows(j)
            res = jax.tree.unflatten(res_tree, [st[j] for st in stash])
            q, k = (a.astype(f32) for a in (q_ref[r, :], k_ref[r, :]))
            res = res._replace(target=(v_ref[r, :] - k_ref[r, :]).astype(f32), lr=lr_ref[r, :], s=s_, ln_scale=gam,
                               ln_bias=bet, xs=(k, *res.xs[1:]), xqs=(q, *res.xqs[1:]))
            dws, dq, dk, dv, dlr, ds, dgam, dbet = minibatch_vjp.step_bwd(res, dz_ref[r, :], dws, eps, dots(spec))
            dq_ref[r, :] = dq
            dk_ref[r, :] = dk
            dv_ref[r, :] = dv
            dlr_ref[r, :] = dlr
            return dws, ds_a + ds, dg_a + dgam, db_a + dbet

        init = (tuple(dc[...] for dc in dcarry), ds_acc[...], dg_acc[...], db_acc[...])
        dws, ds_a, dg_a, db_a = jax.lax.fori_loop(0, group, sweep, init)
        for dc, d in zip(dcarry, dws):
            dc[...] = d
        ds_acc[...] = ds_a
        dg_acc[...] = dg_a
        db_acc[...] = db_a

        @pl.when(g == n_groups - 1)
        def _():
            for dw0, d in zip(dw0_refs, dws):
                dw0[...] = d
            ds_ref[...] = ds_a
            dlns_ref[...] = dg_a
            dlnb_ref[...] = db_a

    rev = lambda i, g: (i, n_groups - 1 - g, 0)
    tok = pl.BlockSpec((SQ, GK, F), rev)
    col = pl.BlockSpec((SQ, GK, 1), rev)
    in_specs = [tok, tok, tok, col, pl.BlockSpec((K, 1), lambda i, g: (0, 0)), _row((1, F)), _row((1, F)), tok]
    in_specs += [pl.BlockSpec((SQ, SQ, *sh), lambda i, g: (i, n_groups - 1 - g, 0, 0)) for sh in wshapes]
    in_specs += [_row(sh) for sh in wshapes]
    out_specs = [tok, tok, tok, col, _row((K, 1)), _row((1, F)), _row((1, F))] + [_row(sh) for sh in wshapes]
    out_shape = [jax.ShapeDtypeStruct(q.shape, f32)] * 3 + [jax.ShapeDtypeStruct(lr.shape, f32),
                                                              jax.ShapeDtypeStruct((N, K, 1), f32),
                                                              jax.ShapeDtypeStruct((N, 1, F), f32),
                                                              jax.ShapeDtypeStruct((N, 1, F), f32)]
    out_shape += [jax.ShapeDtypeStruct((N, *sh), f32) for sh in wshapes]
    scratch = [pltpu.VMEM(sh, f32) for sh in wshapes] + [pltpu.VMEM((group, *r.shape), f32) for r in res_leaves]
    scratch += [pltpu.VMEM((K, 1), f32), pltpu.VMEM((1, F), f32), pltpu.VMEM((1, F), f32)]
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(N, n_groups), in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=scratch, compiler_params=compiler_params(), interpret=interpret_arg(spec),
        # matmul FLOPs: the forward once (step_fwd) + the hand-written backward (2 forwards); dz in, dq..dlr out
        cost_estimate=cost_estimate(q, ws_bounds, K, 3.0, N * T * (5 * F + 1) * 4 + sum(
            4 * w.size for w in (*ws_bounds, *dws_final))),
        name=f"{spec.learner.name}_bwd",
    )(q, k, v, lr, s, ln_scale, ln_bias, dz, *ws_bounds, *dws_final)
    dq, dk, dv, dlr, ds, dlns, dlnb = outs[:7]
    return dq, dk, dv, dlr, ds, tuple(outs[7:]), dlns, dlnb


def _stashed(res: minibatch_vjp.Residuals) -> minibatch_vjp.Residuals:
    """The residuals kept in VMEM per mini-batch: not the inputs the sweep rereads (q, k, v, lr), the constants
    or the biases (step_bwd reads only the weight matrices)."""
    ws = tuple(None if i % 2 else w for i, w in enumerate(res.ws))
    return res._replace(ws=ws, target=None, lr=None, s=None, ln_scale=None, ln_bias=None, xs=(None, *res.xs[1:]),
                        xqs=(None, *res.xqs[1:]))
