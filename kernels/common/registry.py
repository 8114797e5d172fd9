"""Kernel backends per op, and which one a call gets.

A backend ("tpu": Mosaic TPU `pallas_call`; "gpu": Mosaic GPU `plgpu.kernel`) supplies three
functions on flattened sequences (N = B * H rows of work, weights as a tuple (w1, b1, ...) of
[N, a, b] arrays, biases [N, 1, b]; float32 throughout):

    forward(spec, q, k, v, lr, s, ws, ln_scale, ln_bias) -> (z, ws_final, ws_bounds)
        q, k, v [N, T, F] with T a multiple of spec.group * K; lr [N, T, 1]; s [K, 1];
        ln_scale, ln_bias [N, 1, F]; ws_bounds: the weights at the start of every group, [N, n_groups, a, b]
        (None allowed when not spec.save_bounds: the call is not differentiated).
    backward(spec, q, k, v, lr, s, ws_bounds, ln_scale, ln_bias, dz, dws_final)
        -> (dq, dk, dv, dlr, ds [N, K, 1], dws0, dln_scale [N, 1, F], dln_bias [N, 1, F])
    decode(spec, q, k, v, lr, sp, ln_scale, ln_bias, ws, accs) -> (z, ws, accs)
        one token per row: q, k, v, ln_* [N, F], lr [N, 1], sp [1, 2] = (s_pos, 1.0 if the
        token ends its mini-batch else 0.0); ws, accs as `TTTState` per row.

plus `unsupported(learner, F, K) -> str | None` naming a shape it cannot run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from ttc_jax.ttt.learners import Learner


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Static description of one kernel call (hashable: a custom_vjp / jit static argument)."""

    learner: Learner
    backend: str
    group: int
    eps: float
    interpret: bool
    detect_races: bool = False
    block_sequences: int = 8
    save_bounds: bool = True  # False: no gradient will be taken; forward may return ws_bounds=None
    matmul_dtype: str | None = None  # matmul operands: "float32", "bfloat16", None: the backend's default


@dataclasses.dataclass(frozen=True)
class KernelBackend:
    name: str
    forward: Callable
    backward: Callable
    decode: Callable
    unsupported: Callable[[Learner, int, int], "str | None"]
    platforms: tuple[str, ...]  # where it compiles; elsewhere only in interpret mode


_BACKENDS: dict[tuple[str, str], KernelBackend] = {}
_PLATFORM_BACKEND = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "cpu": "tpu"}


def register_backend(op: str, backend: KernelBackend) -> None:
    """Install `backend` for op ("ttt_linear" or "ttt_mlp")."""
    _BACKENDS[(op, backend.name)] = backend


def registered(op: str) -> tuple[str, ...]:
    return tuple(sorted(name for o, name in _BACKENDS if o == op))


def select(op: str, config, platform: str | None = None) -> tuple[KernelBackend, bool]:
    """(backend, interpret) for `config` on `platform` (default: jax.default_backend()); ValueError if none."""
    platform = platform or jax.default_backend()
    name = config.backend or _PLATFORM_BACKEND.get(platform)
    if name is None:
        raise ValueError(f"impl='pallas': no {op} kernel for platform {platform!r}; use impl='xla'")
    backend = _BACKENDS.get((op, name))
    if backend is None:
        raise ValueError(f"impl='pallas': no {name!r} backend is installed for {op} "
                         f"(installed: {registered(op) or 'none'}); use impl='xla'")
    interpret = config.interpret if config.interpret is not None else platform not in backend.platforms
    if not interpret and platform not in backend.platforms:
        raise ValueError(f"impl='pallas': the {name!r} {op} kernels compile only on {backend.platforms}, "
                         f"not on {platform!r}; pass interpret=True in the kernel config or use impl='xla'")
    return backend, interpret
