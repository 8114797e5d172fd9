"""Mosaic TPU forward (prefill) kernel: grid (sequence, group); fast weights in float32 VMEM.

Grid axis 0 runs over the N = B * H sequences ("parallel"), axis 1 over groups of
`spec.group` mini-batches in order ("arbitrary"). The weights live in VMEM scratch across
the whole sequence; each step writes them out once as the group's boundary state (for the
backward's recomputation; skipped when spec.save_bounds is False, i.e. no gradient is taken),
then runs its mini-batches in a `fori_loop`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import minibatch
from .registry import KernelSpec

SQ = getattr(pl, "squeezed", None)  # a squeezed block dim (None in older JAX)


def interpret_arg(spec: KernelSpec):
    if not spec.interpret:
        return False
    return pltpu.InterpretParams(detect_races=True) if spec.detect_races else True


def dots(spec: KernelSpec) -> minibatch.Dots:
    return minibatch.Dots(spec.matmul_dtype or "float32")


def cost_estimate(q, ws, K: int, passes: float, extra_bytes: int) -> pl.CostEstimate:
    """For XLA's scheduler: `passes` x the forward's matmul FLOPs; tokens in and out once, plus extra_bytes."""
    N, T, F = q.shape
    widths = [w.shape[-2:] for w in ws[::2]]
    hidden = sum(b for _, b in widths[:-1])
    tokens = N * T
    return pl.CostEstimate(flops=int(passes * tokens * minibatch.flops_per_token(widths, K)),
                           transcendentals=int(passes * tokens * (2 + 3 * hidden)),
                           bytes_accessed=int(tokens * (4 * F + 1) * 4 + extra_bytes))


def compiler_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))


def _row(shape):
    """BlockSpec of a per-sequence array [N, *shape] indexed only by the sequence."""
    return pl.BlockSpec((SQ, *shape), lambda i, g: (i,) + (0,) * len(shape))


def forward(spec: KernelSpec, q, k, v, lr, s, ws, ln_scale, ln_bias):
    N, T, F = q.shape
    K = s.shape[0]
    GK = spec.group * K
    n_groups = T // GK
    n_w = len(ws)
    eps, group = spec.eps, spec.group

    def kernel(q_ref, k_ref, v_ref, lr_ref, s_ref, lns_ref, lnb_ref, *refs):
        w0_refs, refs = refs[:n_w], refs[n_w:]
        z_ref, refs = refs[0], refs[1:]
        wT_refs, refs = refs[:n_w], refs[n_w:]
        wB_refs, scr = (refs[:n_w], refs[n_w:]) if spec.save_bounds else ((), refs)
        g = pl.program_id(1)

        @pl.when(g == 0)
        def _():
            for sc, w0 in zip(scr, w0_refs):
                sc[...] = w0[...]

        for wb, sc in zip(wB_refs, scr):
            wb[...] = sc[...]
        s_, gam, bet = s_ref[...], lns_ref[...], lnb_ref[...]

        def body(j, ws):
            rows = pl.ds(pl.multiple_of(j * K, K), K)
            z, ws = minibatch.step(ws, q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], lr_ref[rows, :],
                                   s_, gam, bet, eps, dots(spec))
            z_ref[rows, :] = z.astype(z_ref.dtype)
            return ws

        ws_end = jax.lax.fori_loop(0, group, body, tuple(sc[...] for sc in scr))
        for sc, w in zip(scr, ws_end):
            sc[...] = w

        @pl.when(g == n_groups - 1)
        def _():
            for wt, w in zip(wT_refs, ws_end):
                wt[...] = w

    tok = pl.BlockSpec((SQ, GK, F), lambda i, g: (i, g, 0))
    col = pl.BlockSpec((SQ, GK, 1), lambda i, g: (i, g, 0))
    in_specs = [tok, tok, tok, col, pl.BlockSpec((K, 1), lambda i, g: (0, 0)), _row((1, F)), _row((1, F))]
    in_specs += [_row(w.shape[1:]) for w in ws]
    out_specs = [tok] + [_row(w.shape[1:]) for w in ws]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    out_shape += [jax.ShapeDtypeStruct(w.shape, jnp.float32) for w in ws]
    if spec.save_bounds:
        out_specs += [pl.BlockSpec((SQ, SQ, *w.shape[1:]), lambda i, g: (i, g, 0, 0)) for w in ws]
        out_shape += [jax.ShapeDtypeStruct((N, n_groups, *w.shape[1:]), jnp.float32) for w in ws]
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(N, n_groups), in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM(w.shape[1:], jnp.float32) for w in ws],
        compiler_params=compiler_params(), interpret=interpret_arg(spec),
        cost_estimate=cost_estimate(q, ws, K, 1.0, 4 * (sum(o.size for o in out_shape[1:]) + sum(w.size for w in ws))),
        name=f"{spec.learner.name}_fwd",
    )(q, k, v, lr, s, ln_scale, ln_bias, *ws)
    return outs[0], tuple(outs[1:1 + n_w]), (tuple(outs[1 + n_w:]) if spec.save_bounds else None)
