"""Mosaic GPU TTT-MLP decode kernel (kernels/ttt_mlp/gpu_decode.py) on the CPU.

Numerics under the Mosaic GPU interpreter on random inputs: the kernel against the XLA decode math
(common/minibatch.decode_rows) with nonzero accumulators, and decode steps through the entry
(`ttt_mlp(impl="pallas")`, vmapped over samples at different positions, across a mini-batch end)
against the full XLA pass; hardware rules by cross-lowering for CUDA with many sequences.
"""

from __future__ import annotations

import functools
import re

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

F, K = 64, 16
GPU = TTTKernelConfig(backend="gpu", interpret=True)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def spec(interpret=True):
    return GPUSpec(learner=MLP, backend="gpu", group=4, eps=1e-6, interpret=interpret)


def _entry(q, k, v, lr, s, w, lns, lnb, *, impl, state=None, config=GPU):
    return api.ttt_mlp(q, k, v, lr, s, w, lns, lnb, mini_batch_size=K, state=state, impl=impl,
                       kernel_config=config if impl == "pallas" else None)


@pytest.mark.slow  # the entry test below runs the same kernel on both sides of a commit
def test_decode_kernel_matches_the_xla_decode_math():
    """The backend's decode on 3 sequences with random weights and accumulators, before and at a commit."""
    N = 3
    rng = np.random.default_rng(0)
    r = lambda *s, sc=1.0: jnp.asarray(rng.standard_normal(s) * sc, jnp.float32)  # noqa: E731
    q, k, v = r(N, F), r(N, F), r(N, F)
    lr = jnp.asarray(rng.uniform(0.01, 0.1, (N, 1)), jnp.float32)
    lns, lnb = 1 + r(N, F, sc=0.1), r(N, F, sc=0.1)
    shapes = ((N, F, 4 * F), (N, 1, 4 * F), (N, 4 * F, F), (N, 1, F))
    ws = tuple(r(*s, sc=0.05) for s in shapes)
    accs = tuple(r(*s, sc=0.05) for s in shapes)
    step = jax.jit(functools.partial(gpu_backend.decode, spec()))
    for done in (0.0, 1.0):
        sp = jnp.asarray([[0.37, done]], jnp.float32)
        got = step(q, k, v, lr, sp, lns, lnb, ws, accs)
        ref = minibatch.decode_rows(ws, accs, q, k, v, lr, sp[:, :1], sp[:, 1:], lns, lnb, 1e-6)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            assert a.shape == b.shape
            if done and b.ndim > 1 and not np.any(np.asarray(b)):  # committed accumulators are exactly 0
                assert not np.any(np.asarray(a))
            else:
                assert rel(a, b) < 1e-5


def test_decode_steps_under_vmap_equal_the_full_pass():
    """Best-of-N style: a jitted one-token step (the decode kernel) vmapped over samples with their own
    states at different positions: sample 0 at tokens 13, 14 (accumulating), sample 1 at 15 (the end of
    its mini-batch: commit) and 16 (a new one). Outputs and final states equal the full XLA pass."""
    starts, n_dec = (13, 15), 2
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_mlp", B=2, H=1, T=17, F=F, K=K, seed=5, weight_scale=0.05)
    cut = lambda a, lo, hi: a[..., lo:hi, :] if a.ndim == 4 else a[..., lo:hi]  # noqa: E731
    xla = jax.jit(functools.partial(_entry, impl="xla"))
    runs = {T: xla(*(cut(a, 0, T) for a in (q, k, v, lr)), s, w, lns, lnb) for T in (13, 15, 17)}  # both samples
    sample = lambda tree, i: jax.tree.map(lambda a: a[i:i + 1] if a.ndim else a, tree)  # noqa: E731
    state = jax.tree.map(lambda *a: jnp.stack(a), *(sample(runs[t0][1], i) for i, t0 in enumerate(starts)))
    toks = [jnp.stack([cut(a[i:i + 1], t0, t0 + n_dec) for i, t0 in enumerate(starts)]) for a in (q, k, v, lr)]
    step = jax.jit(jax.vmap(lambda st, qt, kt, vt, lrt: _entry(qt, kt, vt, lrt, s, w, lns, lnb, impl="pallas",
                                                               state=st)))
    zs = []
    for t in range(n_dec):
        zt, state = step(state, *(a[..., t:t + 1, :] if a.ndim == 5 else a[..., t:t + 1] for a in toks))
        zs.append(zt)
    z_ref = jnp.stack([cut(runs[17][0][i:i + 1], t0, t0 + n_dec) for i, t0 in enumerate(starts)])
    assert rel(jnp.concatenate(zs, axis=3), z_ref) < 1e-5
    for i, t0 in enumerate(starts):  # the final states too (weights committed once, accumulators since)
        st_ref = sample(runs[t0 + n_dec][1], i)
        assert int(state.pos[i]) == int(st_ref.pos) == (t0 + n_dec) % K  # the position in the mini-batch
        for name in ("w1", "b1", "w2", "b2"):
            assert rel(state.weights[name][i], st_ref.weights[name]) < 1e-5
            assert rel(state.acc[name][i], st_ref.acc[name]) < 1e-5


@pytest.mark.slow
def test_decode_kernel_under_the_gpu_race_detector():
    """TMA loads of the chunk tiles and their write-back under InterpretGPUParams(detect_races=True)
    (it models warpgroups, not the threads inside one, so the vector round trips are not covered)."""
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks

    N = 2
    rng = np.random.default_rng(1)
    r = lambda *s, sc=1.0: jnp.asarray(rng.standard_normal(s) * sc, jnp.float32)  # noqa: E731
    q, k, v, lns, lnb = r(N, F), r(N, F), r(N, F), 1 + r(N, F, sc=0.1), r(N, F, sc=0.1)
    lr = jnp.asarray(rng.uniform(0.01, 0.1, (N, 1)), jnp.float32)
    shapes = ((N, F, 4 * F), (N, 1, 4 * F), (N, 4 * F, F), (N, 1, F))
    ws, accs = (tuple(r(*s, sc=0.05) for s in shapes) for _ in range(2))
    sp = jnp.asarray([[0.5, 1.0]], jnp.float32)
    racy = GPUSpec(learner=MLP, backend="gpu", group=4, eps=1e-6, interpret=True, detect_races=True)
    got = jax.block_until_ready(gpu_backend.decode(racy, q, k, v, lr, sp, lns, lnb, ws, accs))
    assert not gpu_callbacks.get_races().races_found
    ref = minibatch.decode_rows(ws, accs, q, k, v, lr, sp[:, :1], sp[:, 1:], lns, lnb, 1e-6)
    assert rel(got[0], ref[0]) < 1e-5 and rel(got[1][0], ref[1][0]) < 1e-5


def _decode_shapes(N):
    sd = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    ws = (sd(N, F, 4 * F), sd(N, 1, 4 * F), sd(N, 4 * F, F), sd(N, 1, F))
    return (sd(N, F),) * 3 + (sd(N, 1), sd(1, 2), sd(N, F), sd(N, F), ws, ws)


def _lower(N):
    fn = functools.partial(gpu_backend.decode, spec(interpret=False))
    return jax.jit(fn).trace(*_decode_shapes(N)).lower(lowering_platforms=("cuda",))


def test_cross_lowering_for_cuda_with_many_sequences():
    """B * H = 512 heads x 8 samples; and the lowering's shared-memory count (read off its overflow error
    with the bound lowered to 1 byte): three programs must fit an SM's 228 KiB (1 KiB reserved each)."""
    from jax.experimental.mosaic.gpu import core as mgpu_core

    _lower(4096)
    if not hasattr(mgpu_core, "_SMEM_SIZE_BOUND"):  # private knob (JAX 0.10.2 / 0.11)
        pytest.skip("this JAX has no mosaic.gpu.core._SMEM_SIZE_BOUND to read the count with")
    bound, mgpu_core._SMEM_SIZE_BOUND = mgpu_core._SMEM_SIZE_BOUND, 1
    try:
        with pytest.raises(ValueError, match="smem_bytes") as err:
            _lower(8)
    finally:
        mgpu_core._SMEM_SIZE_BOUND = bound
    smem = int(re.search(r"smem_bytes=(\d+)", str(err.value)).group(1))
    assert 65_536 < smem and 3 * (smem + 1024) <= 228 * 1024


def test_unsupported_width_raises_a_clear_error():
    sd = _decode_shapes(2)
    bad = jax.tree.map(lambda a: jax.ShapeDtypeStruct(tuple(2 * d if d == F else d for d in a.shape), a.dtype), sd)
    with pytest.raises(ValueError, match="F=128"):
        jax.eval_shape(functools.partial(gpu_backend.decode, spec()), *bad)


@pytest.mark.gpu
def test_compiled_decode_kernel_matches_xla():
    """On a Hopper GPU, compiled (benchmarks/gpu_check.sh runs `pytest -m gpu tests/kernels`): K decode
    steps from a prefilled state (one commit) against the full XLA pass."""
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU")
    cfg = TTTKernelConfig(backend="gpu", interpret=False)
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_mlp", B=2, H=4, T=64 + 5 + K, F=F, K=K, seed=7,
                                                 weight_scale=0.02, lr_range=(0.0, 1.0 / F))
    t0 = 64 + 5
    z_ref, st_ref = _entry(q, k, v, lr, s, w, lns, lnb, impl="xla")
    _, st = _entry(q[:, :, :t0], k[:, :, :t0], v[:, :, :t0], lr[:, :, :t0], s, w, lns, lnb, impl="xla")
    step = jax.jit(lambda st, *a: _entry(*a, s, w, lns, lnb, impl="pallas", state=st, config=cfg))
    state, zs = jax.tree.map(jnp.asarray, st), []
    for t in range(t0, t0 + K):
        zt, state = step(state, q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], lr[:, :, t:t + 1])
        zs.append(zt)
    assert rel(jnp.concatenate(zs, axis=2), z_ref[:, :, t0:]) < 1e-4
    for name in ("w1", "w2"):
        assert rel(state.weights[name], st_ref.weights[name]) < 1e-4
