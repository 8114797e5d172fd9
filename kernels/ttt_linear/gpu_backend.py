"""Mosaic GPU backend of ttt_linear for the kernel registry (kernels/common/registry.py).

Adapts the registry's calling convention (float32 [N, T, F] sequences, weights (w1, b1)) to the
Mosaic GPU kernels in gpu_forward.py / gpu_backward.py:
- matmul operands in `spec.matmul_dtype` (default bfloat16; "float32" only in the interpreter,
  where it checks the algorithm to float32 rounding), float32 accumulation and state;
- the kernels save a boundary state every 64-token tile (their remat unit), whatever `spec.group`
  says; the tokens are padded to whole tiles with lr = 0 (no update; outputs dropped);
- the gradients of lr and token_scale are folded from the kernel's per-token rows here;
- F = 64 and F = 128: forward, backward and decode are Mosaic GPU kernels (the backward at F = 128
  in its own shared-memory layout, gpu_backward._backward_wide).
Head/tail partial mini-batches never reach this module: kernels/common/fused.py runs them in XLA.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ..common.registry import KernelBackend, KernelSpec
from . import gpu_backward, gpu_decode, gpu_forward
from .gpu_forward import TILE, GPUTileSpec


@dataclasses.dataclass(frozen=True)
class GPUSpec(KernelSpec):
    """A KernelSpec with the wgmma operand dtype ("bfloat16"; "float32" only in the interpreter)."""

    matmul_dtype: str = "bfloat16"


def _tile_spec(spec: KernelSpec, F: int, K: int) -> GPUTileSpec:
    dtype = getattr(spec, "matmul_dtype", None) or "bfloat16"
    reason = gpu_forward.check(F, K, dtype, spec.interpret)
    if reason:
        raise ValueError(reason)
    return GPUTileSpec(F=F, K=K, eps=spec.eps, operand_dtype=dtype, interpret=spec.interpret,
                       detect_races=spec.detect_races)


def pad_tiles(*arrays):
    """Pad axis 1 (tokens) to a multiple of TILE with zeros (zero rates: the weights do not change)."""
    T = arrays[0].shape[1]
    extra = -T % TILE
    if not extra:
        return arrays
    return tuple(jnp.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2)) for a in arrays)


def _prep(ts, q, k, v, lr, s):
    K = s.shape[0]
    lr = lr[..., 0]
    s_k = s[-1, 0]
    return (q.astype(ts.op), k.astype(ts.op), v.astype(ts.op), lr, s_k * lr,
            jnp.tile(s[:, 0], TILE // K))


def forward(spec: KernelSpec, q, k, v, lr, s, ws, ln_scale, ln_bias):
    N, T, F = q.shape
    K = s.shape[0]
    ts = _tile_spec(spec, F, K)
    w, b = ws
    z, w_end, b_end, w_b, b_b = gpu_forward.forward(ts, *_prep(ts, *pad_tiles(q, k, v, lr), s), w, b[:, 0],
                                                     ln_scale[:, 0], ln_bias[:, 0])
    return z[:, :T].astype(q.dtype), (w_end, b_end[:, None]), (w_b, b_b[:, :, None])


def backward(spec: KernelSpec, q, k, v, lr, s, ws_bounds, ln_scale, ln_bias, dz, dws_final):
    N, T, F = q.shape
    K = s.shape[0]
    ts = _tile_spec(spec, F, K)
    q, k, v, lr, dz = pad_tiles(q, k, v, lr, dz)
    qo, ko, vo, lr2, lrl, s_tile = _prep(ts, q, k, v, lr, s)
    w_b, b_b = ws_bounds
    dw_end, db_end = dws_final
    dq, dk, dv, dlr, dlrl, ds_tok, dw0, db0, dgam, dbet = gpu_backward.backward(
        ts, qo, ko, vo, lr2, lrl, s_tile, w_b, b_b[:, :, 0], ln_scale[:, 0], ln_bias[:, 0],
        dz.astype(ts.op), dw_end, db_end[:, 0])
    s_k = s[-1, 0]
    dlr_total = dlr + s_k * dlrl
    ds = ds_tok.reshape(N, -1, K).sum(1)  # per sequence, by position in the mini-batch
    ds = ds.at[:, K - 1].add((lr2 * dlrl).sum(1))
    cut = lambda a: a[:, :T]
    return (cut(dq), cut(dk), cut(dv), cut(dlr_total)[..., None], ds[..., None], (dw0, db0[:, None]), dgam[:, None],
            dbet[:, None])


def unsupported(learner, F: int, K: int) -> str | None:
    return gpu_forward.check(F, K, "bfloat16", interpret=False)


def decode_tile_spec(spec: KernelSpec, F: int, check) -> GPUTileSpec:
    """The decode kernels' tile spec (float32 vector math, one token); ValueError where `check` rejects F."""
    reason = check(F, 16, "bfloat16", interpret=False)
    if reason:
        raise ValueError(reason)
    return GPUTileSpec(F=F, K=1, eps=spec.eps, operand_dtype="float32", interpret=spec.interpret,
                       detect_races=spec.detect_races)


def decode(spec: KernelSpec, q, k, v, lr, sp, ln_scale, ln_bias, ws, accs):
    N, F = q.shape
    ts = decode_tile_spec(spec, F, gpu_forward.check)
    (w, b), (aw, ab) = ws, accs
    z, w, b, aw, ab = gpu_decode.decode(ts, q, k, v, lr[:, 0], sp[0, 0], sp[0, 1], ln_scale, ln_bias,
                                        w, b[:, 0], aw, ab[:, 0])
    return z, (w, b[:, None]), (aw, ab[:, None])


BACKEND = KernelBackend(name="gpu", forward=forward, backward=backward, decode=decode, unsupported=unsupported,
                        platforms=("gpu", "cuda"))
