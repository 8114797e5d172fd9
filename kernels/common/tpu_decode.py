"""Mosaic TPU decode kernel: one token for each of N sequences, `spec.block_sequences` per program.

Each program loads a block of sequences' weights and accumulators and walks them with a
`fori_loop` of 2-D tile math (`minibatch.decode_token`): accumulate lr * grad into the state's
acc, output with the weights after the token, commit at the mini-batch's last token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import minibatch
from .registry import KernelSpec
from .tpu_forward import dots, interpret_arg


def decode(spec: KernelSpec, q, k, v, lr, sp, ln_scale, ln_bias, ws, accs):
    N, F = q.shape
    n_w = len(ws)
    bn = min(spec.block_sequences, N)
    n_pad = -N % bn
    rows = lambda a: a[:, None, :]  # [N, 1, F]: 2-D tiles per sequence
    q, k, v, lr, ln_scale, ln_bias = map(rows, (q, k, v, lr, ln_scale, ln_bias))
    if n_pad:  # whole blocks only
        pad = lambda a: jnp.pad(a, [(0, n_pad)] + [(0, 0)] * (a.ndim - 1))
        q, k, v, lr, ln_scale, ln_bias = map(pad, (q, k, v, lr, ln_scale, ln_bias))
        ws, accs = tuple(map(pad, ws)), tuple(map(pad, accs))
    Np = N + n_pad

    def kernel(q_ref, k_ref, v_ref, lr_ref, sp_ref, lns_ref, lnb_ref, *refs):
        w_refs, a_refs, z_ref = refs[:n_w], refs[n_w:2 * n_w], refs[2 * n_w]
        wo_refs, ao_refs = refs[2 * n_w + 1:3 * n_w + 1], refs[3 * n_w + 1:]
        sp = sp_ref[...]

        def one(i, carry):
            z, new_ws, new_accs = minibatch.decode_token(
                tuple(r[i] for r in w_refs), tuple(r[i] for r in a_refs), q_ref[i], k_ref[i], v_ref[i],
                lr_ref[i], sp[:, 0:1], sp[:, 1:2], lns_ref[i], lnb_ref[i], spec.eps, dots(spec))
            z_ref[i] = z
            for r, w in zip(wo_refs, new_ws):
                r[i] = w
            for r, a in zip(ao_refs, new_accs):
                r[i] = a
            return carry

        jax.lax.fori_loop(0, bn, one, 0)

    blk = lambda shape: pl.BlockSpec((bn, *shape), lambda i: (i,) + (0,) * len(shape))
    row = blk((1, F))
    in_specs = [row, row, row, blk((1, 1)), pl.BlockSpec((1, 2), lambda i: (0, 0)), row, row]
    in_specs += [blk(w.shape[1:]) for w in ws] * 2
    out_specs = [row] + [blk(w.shape[1:]) for w in ws] * 2
    out_shape = [jax.ShapeDtypeStruct((Np, 1, F), jnp.float32)]
    out_shape += [jax.ShapeDtypeStruct(w.shape, jnp.float32) for w in ws] * 2
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(Np // bn,), in_specs=in_specs, out_specs=out_specs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret_arg(spec), name=f"{spec.learner.name}_decode",
    )(q, k, v, lr, sp, ln_scale, ln_bias, *ws, *accs)
    z, new_ws, new_accs = outs[0][:N, 0], outs[1:1 + n_w], outs[1 + n_w:]
    if n_pad:
        new_ws, new_accs = tuple(a[:N] for a in new_ws), tuple(a[:N] for a in new_accs)
    return z, tuple(new_ws), tuple(new_accs)
