"""Mosaic GPU backend of ttt_mlp for the kernel registry (kernels/common/registry.py).

What runs where (full mini-batches; head/tail partial mini-batches run in XLA, kernels/common/fused.py):
- forward: the Mosaic GPU kernel in gpu_forward.py (F = 64 only: the float32 state must fit shared memory),
  saving a boundary state every 64-token tile whatever `spec.group` says;
- backward: the Mosaic GPU kernel in gpu_backward.py (reverse sweep over the forward kernel's tile
  boundaries, recomputation, hand-written VJP; the dL/dW carry in global memory); the gradients of
  lr and token_scale are folded from its per-token rows here;
- decode: the Mosaic GPU kernel in gpu_decode.py (one token per sequence, batched over sequences).
"""

from __future__ import annotations

import jax.numpy as jnp

from ..common.registry import KernelBackend, KernelSpec
from ..ttt_linear.gpu_backend import GPUSpec, pad_tiles  # noqa: F401  (GPUSpec: the spec with matmul_dtype)
from ..ttt_linear.gpu_backend import decode_tile_spec
from ..ttt_linear.gpu_forward import TILE, GPUTileSpec
from . import gpu_backward, gpu_forward
from . import gpu_decode


def _tile_spec(spec: KernelSpec, F: int, K: int) -> GPUTileSpec:
    dtype = getattr(spec, "matmul_dtype", None) or "bfloat16"
    reason = gpu_forward.check(F, K, dtype, spec.interpret)
    if reason:
        raise ValueError(reason)
    return GPUTileSpec(F=F, K=K, eps=spec.eps, operand_dtype=dtype, interpret=spec.interpret,
                       detect_races=spec.detect_races)


def forward(spec: KernelSpec, q, k, v, lr, s, ws, ln_scale, ln_bias):
    N, T, F = q.shape
    K = s.shape[0]
    ts = _tile_spec(spec, F, K)
    w1, b1, w2, b2 = ws
    op = ts.op
    qp, kp, vp, lrp = pad_tiles(q, k, v, lr)  # whole 64-token tiles; zero rates in the padding
    z, ends, bounds = gpu_forward.forward(
        ts, qp.astype(op), kp.astype(op), vp.astype(op), lrp[..., 0], jnp.tile(s[:, 0], TILE // K),
        jnp.broadcast_to(s[-1, 0], (F,)), w1, b1[:, 0], w2, b2[:, 0], ln_scale[:, 0], ln_bias[:, 0])
    w1e, b1e, w2e, b2e = ends
    w1b, b1b, w2b, b2b = bounds
    return (z[:, :T].astype(q.dtype), (w1e, b1e[:, None], w2e, b2e[:, None]),
            (w1b, b1b[:, :, None], w2b, b2b[:, :, None]))


def backward(spec: KernelSpec, q, k, v, lr, s, ws_bounds, ln_scale, ln_bias, dz, dws_final):
    N, T, F = q.shape
    K = s.shape[0]
    ts = _tile_spec(spec, F, K)
    op = ts.op
    qp, kp, vp, lrp, dzp = pad_tiles(q, k, v, lr, dz)  # the forward's padding: zero rates, zero cotangents
    w1b, b1b, w2b, b2b = ws_bounds
    dw1e, db1e, dw2e, db2e = dws_final
    dq, dk, dv, dlr, ds_tok, dsk_tok, (dw1, db1, dw2, db2), dgam, dbet = gpu_backward.backward(
        ts, qp.astype(op), kp.astype(op), vp.astype(op), dzp.astype(op), lrp[..., 0], jnp.tile(s[:, 0], TILE // K),
        jnp.broadcast_to(s[-1, 0], (F,)), w1b, b1b[:, :, 0], w2b, b2b[:, :, 0], ln_scale[:, 0], ln_bias[:, 0],
        dw1e, db1e[:, 0], dw2e, db2e[:, 0])
    ds = ds_tok.reshape(N, -1, K).sum(1).at[:, K - 1].add(dsk_tok.sum(1))  # per sequence, by position
    cut = lambda a: a[:, :T]
    return (cut(dq), cut(dk), cut(dv), cut(dlr)[..., None], ds[..., None], (dw1, db1[:, None], dw2, db2[:, None]),
            dgam[:, None], dbet[:, None])


def decode(spec: KernelSpec, q, k, v, lr, sp, ln_scale, ln_bias, ws, accs):
    """The Mosaic GPU decode kernel (gpu_decode.py: float32 vector math, hidden chunks streamed by TMA)."""
    N, F = q.shape
    ts = decode_tile_spec(spec, F, gpu_forward.check)
    (w1, b1, w2, b2), (a1, ab1, a2, ab2) = ws, accs
    z, *new = gpu_decode.decode(ts, q, k, v, lr[:, 0], sp[0, 0], sp[0, 1], ln_scale, ln_bias, w1, b1[:, 0], w2,
                                b2[:, 0], a1, ab1[:, 0], a2, ab2[:, 0])
    w1, b1, w2, b2, a1, ab1, a2, ab2 = new
    return z, (w1, b1[:, None], w2, b2[:, None]), (a1, ab1[:, None], a2, ab2[:, None])


def unsupported(learner, F: int, K: int) -> str | None:
    return gpu_forward.check(F, K, "bfloat16", interpret=False)


BACKEND = KernelBackend(name="gpu", forward=forward, backward=backward, decode=decode, unsupported=unsupported,
                        platforms=("gpu", "cuda"))
