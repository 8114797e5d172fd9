"""Mosaic TPU decode kernel: one token for each of N sequences, `spec.block_sequences` per program.

Accumulates lr * grad into the state's acc, outputs with the weights after the token, and
commits at the mini-batch's last token (all in `minibatch.decode_token`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import minibatch
from .registry import KernelSpec
from .tpu_forward import interpret_arg


def decode(spec: KernelSpec, q, k, v, lr, sp, ln_scale, ln_bias, ws, accs):
    N, F = q.shape
    n_w = len(ws)
    bn = min(spec.block_sequences, N)
    n_pad = -N % bn
    if n_pad:  # whole blocks only (TPU block rule on the sequence axis)
        pad = lambda a: jnp.pad(a, [(0, n_pad)] + [(0, 0)] * (a.ndim - 1))
        q, k, v, lr, ln_scale, ln_bias = map(pad, (q, k, v, lr, ln_scale, ln_bias))
        ws, accs = tuple(map(pad, ws)), tuple(map(pad, accs))
    Np = N + n_pad

    def kernel(q_ref, k_ref, v_ref, lr_ref, sp_ref, lns_ref, lnb_ref, *refs):
        w_refs, a_refs, z_ref = refs[:n_w], refs[n_w:2 * n_w], refs[2 * n_w]
        wo_refs, ao_refs = refs[2 * n_w + 1:3 * n_w + 1], refs[3 * n_w + 1:]
        sp = sp_ref[...]
        z, new_ws, new_accs = minibatch.decode_token(
            tuple(r[...] for r in w_refs), tuple(r[...] for r in a_refs), q_ref[...], k_ref[...], v_ref[...],
            lr_ref[...], sp[:, 0:1], sp[:, 1:2], lns_ref[...], lnb_ref[...], spec.eps)
        z_ref[...] = z
        for r, w in zip(wo_refs, new_ws):
            r[...] = w
        for r, a in zip(ao_refs, new_accs):
            r[...] = a

    rowb = pl.BlockSpec((bn, F), lambda i: (i, 0))
    wspec = lambda w: pl.BlockSpec((bn, *w.shape[1:]), lambda i: (i, 0, 0))
    in_specs = [rowb, rowb, rowb, pl.BlockSpec((bn, 1), lambda i: (i, 0)), pl.BlockSpec((1, 2), lambda i: (0, 0)),
                rowb, rowb] + [wspec(w) for w in ws] * 2
    out_specs = [rowb] + [wspec(w) for w in ws] * 2
    out_shape = [jax.ShapeDtypeStruct((Np, F), jnp.float32)]
    out_shape += [jax.ShapeDtypeStruct(w.shape, jnp.float32) for w in ws] * 2
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(Np // bn,), in_specs=in_specs, out_specs=out_specs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret_arg(spec), name=f"{spec.learner.name}_decode",
    )(q, k, v, lr, sp, ln_scale, ln_bias, *ws, *accs)
    z, new_ws, new_accs = outs[0], outs[1:1 + n_w], outs[1 + n_w:]
    if n_pad:
        z, new_ws, new_accs = z[:N], tuple(a[:N] for a in new_ws), tuple(a[:N] for a in new_accs)
    return z, tuple(new_ws), tuple(new_accs)
