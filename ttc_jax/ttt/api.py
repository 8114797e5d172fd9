"""Public entry points `ttt_linear` and `ttt_mlp`: validation and dispatch."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ttc_jax.ttt.dual import dual
from ttc_jax.ttt.learners import LEARNERS, LINEAR, MLP, Learner
from ttc_jax.ttt.reference import primal
from ttc_jax.ttt.state import TTTState, init_state

IMPLS = ("auto", "xla", "pallas", "reference")

# Pallas kernels register here (learner name -> callable with the signature of `dual`).
_PALLAS_KERNELS: dict[str, Callable] = {}


def register_pallas_kernel(learner_name: str, fn: Callable) -> None:
    """Install a fused kernel used by impl="pallas" (and "auto" on GPU/TPU)."""
    if learner_name not in LEARNERS:
        raise ValueError(f"learner_name={learner_name!r}; expected one of {sorted(LEARNERS)}")
    _PALLAS_KERNELS[learner_name] = fn


def _resolve_impl(learner: Learner, impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        on_accelerator = jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")
        return "pallas" if on_accelerator and learner.name in _PALLAS_KERNELS else "xla"
    if impl == "pallas" and learner.name not in _PALLAS_KERNELS:
        raise ValueError(
            f"impl='pallas': no Pallas kernel is installed for {learner.name}; use impl='xla' or 'auto'")
    return impl


def _check_shape(name: str, x, expected: tuple) -> None:
    shape = tuple(getattr(x, "shape", ()))
    if shape != tuple(expected):
        raise ValueError(f"{name} has shape {shape}; expected {tuple(expected)}")


def _validate(learner: Learner, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
              mini_batch_size, state, remat_group):
    if not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool) or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size={mini_batch_size!r}; expected an int >= 1")
    if not isinstance(remat_group, int) or remat_group < 0:
        raise ValueError(f"remat_group={remat_group!r}; expected an int >= 0 (0 disables remat)")
    if getattr(q, "ndim", None) != 4:
        raise ValueError(f"q has shape {tuple(getattr(q, 'shape', ()))}; expected rank 4 [B, H, T, F]")
    B, H, T, F = q.shape
    if T == 0:
        raise ValueError(f"q has T=0 tokens (shape {q.shape}); expected T >= 1")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} has dtype {x.dtype}; expected a floating dtype")
    _check_shape("k", k, q.shape)
    _check_shape("v", v, q.shape)
    _check_shape("lr", lr, (B, H, T))
    _check_shape("token_scale", token_scale, (mini_batch_size,))
    _check_shape("ln_scale", ln_scale, (H, F))
    _check_shape("ln_bias", ln_bias, (H, F))
    expected = learner.weight_shapes(H, F)
    if not isinstance(weights, Mapping) or set(weights) != set(expected):
        got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
        raise ValueError(f"weights has keys {got}; expected {sorted(expected)} for {learner.name}")
    for name, shape in expected.items():
        _check_shape(f"weights[{name!r}]", weights[name], shape)
    if state is not None:
        if not isinstance(state, TTTState):
            raise ValueError(f"state has type {type(state).__name__}; expected TTTState or None")
        for name, shape in expected.items():
            _check_shape(f"state.weights[{name!r}]", state.weights[name], (B, *shape))
            _check_shape(f"state.acc[{name!r}]", state.acc[name], (B, *shape))


def _ttt(learner: Learner, q, k, v, lr, token_scale, weights, ln_scale, ln_bias, *,
         mini_batch_size, state, impl, remat_group, return_stats, eps):
    _validate(learner, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
              mini_batch_size, state, remat_group)
    impl = _resolve_impl(learner, impl)
    out_dtype = q.dtype
    dt = jnp.promote_types(q.dtype, jnp.float32)  # float32 state and accumulation for bf16 inputs
    q, k, v, lr, token_scale, ln_scale, ln_bias = (
        jnp.asarray(a).astype(dt) for a in (q, k, v, lr, token_scale, ln_scale, ln_bias))
    if state is None:
        state = init_state(weights, q.shape[0], dt)
    else:
        state = jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
                             state)

    if impl == "reference":
        if return_stats:
            raise ValueError("return_stats=True is not supported with impl='reference'")
        z, new_state = primal(learner, q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps)
        stats = None
    elif impl == "pallas":
        z, new_state, stats = _PALLAS_KERNELS[learner.name](
            learner, q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps,
            remat_group=remat_group, stats=return_stats)
    else:
        z, new_state, stats = dual(learner, q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps,
                                   remat_group=remat_group, stats=return_stats)
    z = z.astype(out_dtype)
    return (z, new_state, stats) if return_stats else (z, new_state)


def ttt_linear(q: Float[Array, "B H T F"], k: Float[Array, "B H T F"], v: Float[Array, "B H T F"],
               lr: Float[Array, "B H T"], token_scale: Float[Array, " K"],
               weights: Mapping[str, Array], ln_scale: Float[Array, "H F"], ln_bias: Float[Array, "H F"],
               *, mini_batch_size: int = 16, state: TTTState | None = None, impl: str = "auto",
               remat_group: int = 4, return_stats: bool = False, eps: float = 1e-6):
    """TTT-Linear inner loop: z = q + LN(q W_t + b_t) with W updated per mini-batch.

    lr holds the token rates already scaled (base_lr * sigmoid(.) / F), so that
    eta[i, j] = token_scale[i] * lr[j] inside each mini-batch of K tokens.
    Returns (z [B, H, T, F], state), plus per-segment stats when return_stats,
    each [B, H, n_segments] (a segment is a mini-batch, or the part of one that
    this call saw): the inner loss 1/2 ||LN(f(k)) - (v - k)||^2 averaged over
    the segment's tokens at the weights before ("loss_before") and after
    ("loss_after") its update, the same on its last token alone
    ("last_token_loss_before", "last_token_loss_after"; ttt-lm-jax's
    ttt_loss_mse_step_0/1 up to the factor 2/F), and the Frobenius norm of
    the weight change ("delta_norm").
    """
    return _ttt(LINEAR, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
                mini_batch_size=mini_batch_size, state=state, impl=impl,
                remat_group=remat_group, return_stats=return_stats, eps=eps)


def ttt_mlp(q: Float[Array, "B H T F"], k: Float[Array, "B H T F"], v: Float[Array, "B H T F"],
            lr: Float[Array, "B H T"], token_scale: Float[Array, " K"],
            weights: Mapping[str, Array], ln_scale: Float[Array, "H F"], ln_bias: Float[Array, "H F"],
            *, mini_batch_size: int = 16, state: TTTState | None = None, impl: str = "auto",
            remat_group: int = 4, return_stats: bool = False, eps: float = 1e-6):
    """TTT-MLP inner loop (f = gelu_tanh(k W1 + b1) W2 + b2); arguments as `ttt_linear`."""
    return _ttt(MLP, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
                mini_batch_size=mini_batch_size, state=state, impl=impl,
                remat_group=remat_group, return_stats=return_stats, eps=eps)


def ttt(kind: str, *args, **kwargs):
    """`ttt_linear` or `ttt_mlp` by layer kind name."""
    if kind not in LEARNERS:
        raise ValueError(f"kind={kind!r}; expected one of {sorted(LEARNERS)}")
    return (ttt_linear if kind == "ttt_linear" else ttt_mlp)(*args, **kwargs)
