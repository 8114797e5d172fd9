"""Mosaic GPU TTT-MLP kernels (kernels/ttt_mlp/gpu_*.py) on the CPU: the forward kernel under the
Mosaic GPU interpreter against the XLA math (float32 operands < 1e-5), the backend's forward and backward
kernels through jax.grad, and cross-lowering for CUDA (shared memory: 226,440 of 232,448 bytes)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("absl")  # jax.experimental.pallas.mosaic_gpu needs absl-py

from ttc_jax.kernels.common import minibatch  # noqa: E402
from ttc_jax.kernels.common.config import TTTKernelConfig  # noqa: E402
from ttc_jax.kernels.ttt_linear.gpu_backend import GPUSpec  # noqa: E402
from ttc_jax.kernels.ttt_mlp import gpu_backend  # noqa: E402
from ttc_jax.ttt import api  # noqa: E402
from ttc_jax.ttt.learners import MLP  # noqa: E402
from ttc_jax.ttt.testing import random_inputs  # noqa: E402

F = 64


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def spec(K, interpret=True, matmul_dtype="float32"):
    return GPUSpec(learner=MLP, backend="gpu", group=64 // K, eps=1e-6, interpret=interpret, matmul_dtype=matmul_dtype)


def test_forward_matches_xla_float32_with_boundaries():
    """Two 64-token tiles of K = 32 (the K = 16 tiling is covered by the entry test below)."""
    K, T = 32, 128
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_mlp", B=1, H=1, T=T, F=F, K=K, seed=0, weight_scale=0.05)
    x = (q[0], k[0], v[0], lr[0][..., None], s[:, None], tuple(w[n] for n in ("w1", "b1", "w2", "b2")),
         lns[:, None], lnb[:, None])
    z, ends, bounds = jax.jit(functools.partial(gpu_backend.forward, spec(K)))(*x)

    def seq(qh, kh, vh, lrh, ws, g, be):
        zs, mid = [], None
        for i in range(T // K):
            if i == 64 // K:
                mid = ws
            r = slice(i * K, (i + 1) * K)
            zi, ws = minibatch.step(ws, qh[r], kh[r], vh[r], lrh[r], x[4], g, be, 1e-6)
            zs.append(zi)
        return jnp.concatenate(zs), ws, mid

    z_ref, w_ref, mid = jax.vmap(seq)(*x[:4], x[5], *x[6:])
    assert rel(z, z_ref) < 1e-5
    for a, r in zip(ends, w_ref):
        assert rel(a, r) < 1e-5
    for a, r in zip(bounds, mid):
        assert rel(a[:, 1], r) < 1e-5


@pytest.mark.slow
def test_entry_bf16_gradients_through_the_gpu_backend():
    """ttt_mlp(impl="pallas") with the GPU backend: kernel forward (bf16 operands), tail in XLA, and the
    backend's backward kernel (kernels/ttt_mlp/gpu_backward.py) under jax.grad."""
    K = 16
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_mlp", B=1, H=1, T=64 + 5, F=F, K=K, seed=2,
                                                 weight_scale=0.05)
    cfg = TTTKernelConfig(backend="gpu", interpret=True)

    def loss(impl, q, k, v, w):
        z, st = api.ttt_mlp(q, k, v, lr, s, w, lns, lnb, mini_batch_size=K, impl=impl,
                            kernel_config=cfg if impl == "pallas" else None)
        return (z * jnp.sin(z)).sum(), z

    (_, z), g = jax.value_and_grad(functools.partial(loss, "pallas"), argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, w)
    (_, z0), g0 = jax.value_and_grad(functools.partial(loss, "xla"), argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, w)
    assert rel(z, z0) < 2e-2
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
        assert rel(a, b) < 2e-2


def _lower(T, N=512, K=16):
    sd = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    ws = (sd(N, F, 4 * F), sd(N, 1, 4 * F), sd(N, 4 * F, F), sd(N, 1, F))
    x = (sd(N, T, F),) * 3 + (sd(N, T, 1), sd(K, 1), ws, sd(N, 1, F), sd(N, 1, F))
    fwd = functools.partial(gpu_backend.forward, spec(K, interpret=False, matmul_dtype="bfloat16"))
    jax.jit(fwd).trace(*x).lower(lowering_platforms=("cuda",))


def test_cross_lowering_for_cuda_at_a_benchmark_shape():
    _lower(2048)


@pytest.mark.slow
@pytest.mark.parametrize("T", [8192, 32768])
def test_cross_lowering_for_cuda_at_long_sequences(T):
    _lower(T)


def test_unsupported_shapes_raise_clear_errors():
    assert "F=128" in gpu_backend.unsupported(MLP, 128, 16)
    assert gpu_backend.unsupported(MLP, 64, 16) is None


@pytest.mark.slow
def test_decode_through_the_gpu_backend_equals_the_full_pass():
    """The GPU backend's ttt_mlp decode (the XLA decode math, no kernel) across a mini-batch end."""
    K, t0, n_dec = 16, 14, 3
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_mlp", B=1, H=2, T=t0 + n_dec, F=F, K=K, seed=4,
                                                 weight_scale=0.05)
    cfg = TTTKernelConfig(backend="gpu", interpret=True)
    run = lambda impl, *a, state=None: api.ttt_mlp(*a, s, w, lns, lnb, mini_batch_size=K, impl=impl, state=state,
                                                    kernel_config=cfg if impl == "pallas" else None)
    z_ref, _ = run("xla", q, k, v, lr)
    _, st = run("xla", q[:, :, :t0], k[:, :, :t0], v[:, :, :t0], lr[:, :, :t0])
    step = jax.jit(lambda st, *a: run("pallas", *a, state=st))
    st = jax.tree.map(jnp.asarray, st)
    zs = []
    for t in range(t0, t0 + n_dec):
        zt, st = step(st, q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], lr[:, :, t:t + 1])
        zs.append(zt)
    assert rel(jnp.concatenate(zs, axis=2), z_ref[:, :, t0:]) < 1e-5
