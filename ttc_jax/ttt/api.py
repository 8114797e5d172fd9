"""Public entry points `ttt_linear` and `ttt_mlp`: validation and dispatch."""

from __future__ import annotations

import numbers
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ttc_jax.ttt.dual import dual
from ttc_jax.ttt.learners import LEARNERS, LINEAR, MLP, Learner
from ttc_jax.ttt.reference import primal
from ttc_jax.ttt.state import TTTState, init_state, static_pos

IMPLS = ("auto", "xla", "pallas", "reference")

# Pallas kernels register here (learner name -> (callable with the signature of `dual` plus a
# `config` keyword, unsupported(q_shape, dtype, mini_batch_size, stats, config) -> reason or None)).
_PALLAS_KERNELS: dict[str, Callable] = {}
_PALLAS_UNSUPPORTED: dict[str, Callable] = {}


def register_pallas_kernel(learner_name: str, fn: Callable, unsupported: Callable | None = None) -> None:
    """Install a fused kernel used by impl="pallas" (and "auto" on GPU/TPU when `unsupported` says None)."""
    if learner_name not in LEARNERS:
        raise ValueError(f"learner_name={learner_name!r}; expected one of {sorted(LEARNERS)}")
    _PALLAS_KERNELS[learner_name] = fn
    _PALLAS_UNSUPPORTED[learner_name] = unsupported or (lambda *a, **k: None)


def _load_kernels() -> None:
    """Import ttc_jax.kernels once (it registers itself here; it imports this module, hence lazily)."""
    if not _PALLAS_KERNELS:
        import ttc_jax.kernels  # noqa: F401


def _resolve_impl(learner: Learner, impl: str, q=None, mini_batch_size: int = 16, return_stats: bool = False,
                  kernel_config=None) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; expected one of {IMPLS}")
    if impl in ("auto", "pallas"):
        _load_kernels()
    reason = None
    if impl in ("auto", "pallas") and learner.name in _PALLAS_KERNELS and q is not None:
        reason = _PALLAS_UNSUPPORTED[learner.name](q.shape, q.dtype, mini_batch_size, return_stats, kernel_config)
    if impl == "auto":
        on_accelerator = jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")
        return "pallas" if on_accelerator and learner.name in _PALLAS_KERNELS and not reason else "xla"
    if impl == "pallas" and learner.name not in _PALLAS_KERNELS:
        raise ValueError(
            f"impl='pallas': no Pallas kernel is installed for {learner.name}; use impl='xla' or 'auto'")
    if impl == "pallas" and reason:
        raise ValueError(reason)
    return impl


def _check_shape(name: str, x, expected: tuple) -> None:
    shape = tuple(getattr(x, "shape", ()))
    if shape != tuple(expected):
        raise ValueError(f"{name} has shape {shape}; expected {tuple(expected)}")


def _as_int(name: str, value, lowest: int, what: str) -> int:
    """A Python int from an int or NumPy integer >= lowest, else a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
        raise ValueError(f"{name}={value!r}; expected an int >= {lowest}{what}")
    return int(value)


def _validate(learner: Learner, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
              mini_batch_size, state, remat_group):
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
        p = static_pos(state)
        if p is not None and not 0 <= p < mini_batch_size:
            raise ValueError(f"state.pos={p} does not fit mini_batch_size={mini_batch_size}; expected a state "
                             f"from a call with the same mini_batch_size (0 <= pos < {mini_batch_size})")


def _ttt(learner: Learner, q, k, v, lr, token_scale, weights, ln_scale, ln_bias, *,
         mini_batch_size, state, impl, remat_group, return_stats, eps, kernel_config=None):
    mini_batch_size = _as_int("mini_batch_size", mini_batch_size, 1, "")
    remat_group = _as_int("remat_group", remat_group, 0, " (0 disables remat)")
    # nested lists are accepted where arrays are expected
    q, k, v, lr, token_scale, ln_scale, ln_bias = (
        jnp.asarray(a) if isinstance(a, (list, tuple)) else a for a in (q, k, v, lr, token_scale, ln_scale, ln_bias))
    if isinstance(weights, Mapping):
        weights = {n: jnp.asarray(a) if isinstance(a, (list, tuple)) else a for n, a in weights.items()}
    _validate(learner, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
              mini_batch_size, state, remat_group)
    impl = _resolve_impl(learner, impl, q, mini_batch_size, return_stats, kernel_config)
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
            remat_group=remat_group, stats=return_stats, config=kernel_config)
    else:
        z, new_state, stats = dual(learner, q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps,
                                   remat_group=remat_group, stats=return_stats)
    z = z.astype(out_dtype)
    return (z, new_state, stats) if return_stats else (z, new_state)


def ttt_linear(q: Float[Array, "B H T F"], k: Float[Array, "B H T F"], v: Float[Array, "B H T F"],
               lr: Float[Array, "B H T"], token_scale: Float[Array, " K"],
               weights: Mapping[str, Array], ln_scale: Float[Array, "H F"], ln_bias: Float[Array, "H F"],
               *, mini_batch_size: int = 16, state: TTTState | None = None, impl: str = "auto",
               remat_group: int = 4, return_stats: bool = False, eps: float = 1e-6,
               kernel_config=None):
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
    impl: "xla" (the dual-form scan), "reference" (primal), "pallas" (the fused kernels of
    ttc_jax.kernels; interpret mode on CPU; a ValueError when they cannot take the call), or
    "auto" (the kernels on GPU/TPU when they can take the call, else "xla"). kernel_config: a
    ttc_jax.kernels.TTTKernelConfig for "pallas"/"auto" (None: defaults).
    """
    return _ttt(LINEAR, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
                mini_batch_size=mini_batch_size, state=state, impl=impl,
                remat_group=remat_group, return_stats=return_stats, eps=eps, kernel_config=kernel_config)


def ttt_mlp(q: Float[Array, "B H T F"], k: Float[Array, "B H T F"], v: Float[Array, "B H T F"],
            lr: Float[Array, "B H T"], token_scale: Float[Array, " K"],
            weights: Mapping[str, Array], ln_scale: Float[Array, "H F"], ln_bias: Float[Array, "H F"],
            *, mini_batch_size: int = 16, state: TTTState | None = None, impl: str = "auto",
            remat_group: int = 4, return_stats: bool = False, eps: float = 1e-6,
            kernel_config=None):
    """TTT-MLP inner loop (f = gelu_tanh(k W1 + b1) W2 + b2); arguments as `ttt_linear`."""
    return _ttt(MLP, q, k, v, lr, token_scale, weights, ln_scale, ln_bias,
                mini_batch_size=mini_batch_size, state=state, impl=impl,
                remat_group=remat_group, return_stats=return_stats, eps=eps, kernel_config=kernel_config)


def ttt(kind: str, *args, **kwargs):
    """`ttt_linear` or `ttt_mlp` by layer kind name."""
    if kind not in LEARNERS:
        raise ValueError(f"kind={kind!r}; expected one of {sorted(LEARNERS)}")
    return (ttt_linear if kind == "ttt_linear" else ttt_mlp)(*args, **kwargs)
