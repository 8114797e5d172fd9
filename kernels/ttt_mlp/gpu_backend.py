"""Mosaic GPU backend of ttt_mlp for the kernel registry (kernels/common/registry.py).

What runs where (full mini-batches; head/tail partial mini-batches run in XLA, kernels/common/fused.py):
- forward: the Mosaic GPU kernel in gpu_forward.py (F = 64 only: the float32 state must fit shared memory),
  saving a boundary state every 64-token tile whatever `spec.group` says;
- backward: NOT a Mosaic GPU kernel. The reverse sweep over the forward kernel's saved group
  boundaries, each group recomputed and differentiated by XLA (ttt_linear.gpu_backend._xla_backward);
- decode: the XLA decode math (common/minibatch.decode_rows), not a kernel.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..common import minibatch
from ..common.registry import KernelBackend, KernelSpec
from ..ttt_linear.gpu_backend import GPUSpec, _xla_backward, pad_tiles  # noqa: F401  (GPUSpec: the spec with matmul_dtype)
from ..ttt_linear.gpu_forward import TILE, GPUTileSpec
from . import gpu_forward


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
    _tile_spec(spec, q.shape[-1], s.shape[0])
    return _xla_backward(spec, q, k, v, lr, s, ws_bounds, ln_scale, ln_bias, dz, dws_final)


def decode(spec: KernelSpec, q, k, v, lr, sp, ln_scale, ln_bias, ws, accs):
    return minibatch.decode_rows(ws, accs, q, k, v, lr, sp[:, :1], sp[:, 1:], ln_scale, ln_bias, spec.eps)


def unsupported(learner, F: int, K: int) -> str | None:
    return gpu_forward.check(F, K, "bfloat16", interpret=False)


BACKEND = KernelBackend(name="gpu", forward=forward, backward=backward, decode=decode, unsupported=unsupported,
                        platforms=("gpu", "cuda"))
