"""The kernel entry with the signature of `ttc_jax.ttt.dual.dual`: what runs where.

- Full mini-batches: the backend's forward kernel (grid over B * H sequences and groups of
  mini-batches), differentiated through `jax.custom_vjp` with the backend's backward kernel.
  The tokens are padded to whole groups with lr = 0 (a mini-batch with lr = 0 leaves the
  weights unchanged; its outputs are dropped).
- The head (tokens that finish a mini-batch a carried state left open) and the tail (a last,
  partial mini-batch, whose updates stay uncommitted in the state's acc): the XLA path
  (`ttc_jax.ttt.dual.dual` on those few tokens), differentiated by JAX as usual.
- A traced state position (a decode step inside `jit`): the backend's decode kernel, one
  token per scan step, batched over B * H sequences (inference only: no custom_vjp).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ttc_jax.ttt.dual import dual
from ttc_jax.ttt.learners import Learner
from ttc_jax.ttt.state import TTTState, static_pos

from .config import TTTKernelConfig
from .registry import KernelSpec, select

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")  # inputs; the kernels compute in float32


def unsupported(op: str, learner: Learner, q_shape, dtype, mini_batch_size: int, stats: bool,
                config: TTTKernelConfig | None) -> str | None:
    """Why the kernels cannot run this call on the present platform, or None."""
    if stats:
        return "return_stats=True is not supported by the Pallas kernels; use impl='xla'"
    if jnp.dtype(dtype).name not in SUPPORTED_DTYPES:
        return f"q has dtype {jnp.dtype(dtype).name}; the Pallas kernels take {SUPPORTED_DTYPES}"
    try:
        backend, _ = select(op, config or TTTKernelConfig())
    except ValueError as e:
        return str(e)
    return backend.unsupported(learner, q_shape[-1], mini_batch_size)


def _spec(op, learner, config, remat_group, eps) -> tuple:
    config = config or TTTKernelConfig()
    backend, interpret = select(op, config)
    spec = KernelSpec(learner=learner, backend=backend.name, group=config.group(remat_group), eps=float(eps),
                      interpret=bool(interpret), detect_races=config.detect_races,
                      block_sequences=config.block_sequences, matmul_dtype=config.matmul_dtype)
    return backend, spec


def make_entry(op: str):
    """fn(learner, q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps, *, remat_group, stats, config)."""

    def entry(learner, q, k, v, lr, token_scale, state: TTTState, ln_scale, ln_bias, eps, *,
              remat_group: int = 4, stats: bool = False, config: TTTKernelConfig | None = None):
        reason = unsupported(op, learner, q.shape, q.dtype, token_scale.shape[0], stats, config)
        if reason:
            raise ValueError(reason)
        backend, spec = _spec(op, learner, config, remat_group, eps)
        if static_pos(state) is None:
            z, state = _decode_scan(backend, spec, q, k, v, lr, token_scale, state, ln_scale, ln_bias)
            return z, state, None
        return (*_prefill(backend, spec, q, k, v, lr, token_scale, state, ln_scale, ln_bias), None)

    return entry


def _prefill(backend, spec, q, k, v, lr, token_scale, state, ln_scale, ln_bias):
    K = token_scale.shape[0]
    B, H, T, F = q.shape
    p = static_pos(state)
    xla = functools.partial(dual, spec.learner, token_scale=token_scale, ln_scale=ln_scale, ln_bias=ln_bias,
                            eps=spec.eps, remat_group=spec.group)
    cut = lambda a, i, j: a[:, :, i:j]
    outs, t = [], 0
    if p > 0:  # head: finish the open mini-batch in XLA
        t = min(K - p, T)
        z, state, _ = xla(*(cut(a, 0, t) for a in (q, k, v, lr)), state=state)
        outs.append(z)
    n_full = (T - t) // K
    if n_full:
        end = t + n_full * K
        z, w = _full(backend, spec, *(cut(a, t, end) for a in (q, k, v, lr)), token_scale, state.weights,
                     ln_scale, ln_bias)
        outs.append(z)
        state = TTTState(weights=w, acc=jax.tree.map(jnp.zeros_like, w), pos=0)
        t = end
    if t < T:  # tail: a partial last mini-batch, uncommitted, in XLA
        z, state, _ = xla(*(cut(a, t, T) for a in (q, k, v, lr)), state=state)
        outs.append(z)
    z = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
    return z, state


def _full(backend, spec, q, k, v, lr, token_scale, weights, ln_scale, ln_bias):
    """Full mini-batches [B, H, n * K, F] through the kernels; returns z and the committed weights."""
    B, H, T, F = q.shape
    K = token_scale.shape[0]
    names = [f"{p}{i}" for i in range(1, spec.learner.n_layers + 1) for p in ("w", "b")]
    N = B * H
    pad_t = -T % (spec.group * K)
    flat = lambda a: a.reshape(N, *a.shape[2:])
    pad = lambda a: jnp.pad(a, [(0, 0), (0, pad_t)] + [(0, 0)] * (a.ndim - 2))
    qf, kf, vf = (pad(flat(a)) for a in (q, k, v))
    lrf = pad(flat(lr))[..., None]  # zero rates in the padding: no update
    ws = tuple(flat(weights[n]) for n in names)
    ln = lambda a: jnp.broadcast_to(a[None, :, None, :], (B, H, 1, F)).reshape(N, 1, F)
    z, ws_end = _core((backend, spec), qf, kf, vf, lrf, token_scale[:, None], ws,
                      ln(ln_scale), ln(ln_bias))
    z = z[:, :T].reshape(B, H, T, F)
    return z, {n: w.reshape(B, H, *w.shape[1:]) for n, w in zip(names, ws_end)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(key, q, k, v, lr, s, ws, ln_scale, ln_bias):
    backend, spec = key
    # not differentiated: the kernel need not write the group-boundary states
    z, ws_end, _ = backend.forward(dataclasses.replace(spec, save_bounds=False), q, k, v, lr, s, ws, ln_scale, ln_bias)
    return z, ws_end


def _core_fwd(key, q, k, v, lr, s, ws, ln_scale, ln_bias):
    backend, spec = key
    z, ws_end, ws_bounds = backend.forward(spec, q, k, v, lr, s, ws, ln_scale, ln_bias)
    return (z, ws_end), (q, k, v, lr, s, ws_bounds, ln_scale, ln_bias)


def _core_bwd(key, res, cts):
    backend, spec = key
    q, k, v, lr, s, ws_bounds, ln_scale, ln_bias = res
    dz, dws_end = cts
    dq, dk, dv, dlr, ds, dws, dlns, dlnb = backend.backward(spec, q, k, v, lr, s, ws_bounds, ln_scale, ln_bias,
                                                           dz, tuple(dws_end))
    return dq, dk, dv, dlr, ds.sum(0), tuple(dws), dlns, dlnb


_core.defvjp(_core_fwd, _core_bwd)


def _decode_scan(backend, spec, q, k, v, lr, token_scale, state, ln_scale, ln_bias):
    """Tokens one at a time through the decode kernel (state position traced)."""
    B, H, T, F = q.shape
    K = token_scale.shape[0]
    N = B * H
    names = [f"{p}{i}" for i in range(1, spec.learner.n_layers + 1) for p in ("w", "b")]
    flat = lambda a: a.reshape(N, *a.shape[2:])
    ln = lambda a: jnp.broadcast_to(a[None], (B, H, F)).reshape(N, F)
    lns, lnb = ln(ln_scale), ln(ln_bias)

    def one(carry, x):
        ws, accs, pos = carry
        qt, kt, vt, lrt = x
        sp = jnp.stack([token_scale[pos], (pos == K - 1).astype(jnp.float32)])[None, :].astype(jnp.float32)
        z, ws, accs = backend.decode(spec, flat(qt), flat(kt), flat(vt), flat(lrt)[:, None], sp, lns, lnb,
                                     ws, accs)
        return (ws, accs, (pos + 1) % K), z.reshape(B, H, F)

    carry = (tuple(flat(state.weights[n]) for n in names), tuple(flat(state.acc[n]) for n in names),
             jnp.asarray(state.pos, jnp.int32))
    xs = tuple(jnp.moveaxis(a, 2, 0) for a in (q, k, v, lr))
    (ws, accs, pos), z = jax.lax.scan(one, carry, xs)
    unflat = lambda a: a.reshape(B, H, *a.shape[1:])
    state = TTTState(weights={n: unflat(w) for n, w in zip(names, ws)},
                     acc={n: unflat(a) for n, a in zip(names, accs)}, pos=pos)
    return jnp.moveaxis(z, 0, 2), state
