"""Mosaic GPU TTT-Linear kernels (kernels/ttt_linear/gpu_*.py) on the CPU.

Numerics run under the Mosaic GPU interpreter (InterpretGPUParams) against the XLA scan on
random inputs; hardware rules (wgmma shapes, layouts, shared-memory size) are checked by
cross-lowering for CUDA at the benchmark shapes. Tolerances: float32 wgmma operands (an
interpreter-only mode that checks the algorithm) < 1e-5 forward and < 1e-4 gradients;
bfloat16 operands (what the GPU runs) < 2e-2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("absl")  # jax.experimental.pallas.mosaic_gpu needs absl-py

from ttc_jax.kernels.common import minibatch  # noqa: E402
from ttc_jax.kernels.common.config import TTTKernelConfig  # noqa: E402
from ttc_jax.kernels.common.registry import KernelSpec  # noqa: E402
from ttc_jax.kernels.ttt_linear import gpu_backend, gpu_forward  # noqa: E402
from ttc_jax.ttt import api  # noqa: E402
from ttc_jax.ttt.learners import LINEAR  # noqa: E402
from ttc_jax.ttt.testing import random_inputs  # noqa: E402

K = 16
GPU = TTTKernelConfig(backend="gpu", interpret=True)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def spec(interpret=True, matmul_dtype="float32", mbs=K):
    return gpu_backend.GPUSpec(learner=LINEAR, backend="gpu", group=64 // mbs, eps=1e-6, interpret=interpret,
                               matmul_dtype=matmul_dtype)


def flat_inputs(N=2, T=128, F=64, seed=0, mbs=K):
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_linear", B=1, H=N, T=T, F=F, K=mbs, seed=seed,
                                                 weight_scale=0.05)
    return (q[0], k[0], v[0], lr[0][..., None], s[:, None], (w["w1"], w["b1"]), lns[:, None], lnb[:, None])


def xla_full(q, k, v, lr, s, ws, lns, lnb):
    """The oracle: the dual form one mini-batch at a time (kernels/common/minibatch.step), per sequence."""
    T, K = q.shape[1], s.shape[0]

    def seq(qh, kh, vh, lrh, w, b, g, be):
        wsh, zs = (w, b), []
        for i in range(T // K):
            r = slice(i * K, (i + 1) * K)
            z, wsh = minibatch.step(wsh, qh[r], kh[r], vh[r], lrh[r], s, g, be, 1e-6)
            zs.append(z)
        return jnp.concatenate(zs), wsh

    return jax.vmap(seq)(q, k, v, lr, ws[0], ws[1], lns, lnb)


def _fwd_bwd_f32(N, mbs, F=64, matmul_dtype="float32"):
    x = flat_inputs(N=N, T=128, F=F, mbs=mbs)  # two tiles: the backward recomputes the second from its boundary
    sp = spec(mbs=mbs, matmul_dtype=matmul_dtype)
    (z_ref, w_ref), vjp = jax.vjp(xla_full, *x)
    rng = np.random.default_rng(1)
    dz = jnp.asarray(rng.standard_normal(z_ref.shape), jnp.float32)
    dws = tuple(jnp.asarray(rng.standard_normal(w.shape), jnp.float32) for w in w_ref)
    z, w_end, bounds = jax.jit(functools.partial(gpu_backend.forward, sp))(*x)
    grads = jax.jit(functools.partial(gpu_backend.backward, sp))(*x[:5], bounds, *x[6:], dz, dws)
    return (z, w_end, bounds), (z_ref, w_ref), grads, vjp((dz, dws)), x


@pytest.fixture(scope="module")
def fwd_bwd_f32():
    """K = 32 (2 mini-batches per 64-token tile) keeps the interpreter run short; K = 16 is the slow test."""
    return _fwd_bwd_f32(N=1, mbs=32)


@pytest.mark.slow
def test_forward_backward_float32_k16():
    fwd_bwd_k16 = _fwd_bwd_f32(N=2, mbs=16)
    test_forward_matches_xla_float32(fwd_bwd_k16)
    test_backward_matches_jax_vjp_float32(fwd_bwd_k16)


def test_forward_matches_xla_float32(fwd_bwd_f32):
    (z, (w, b), _), (z_ref, (w_ref, b_ref)), _, _, _ = fwd_bwd_f32
    assert rel(z, z_ref) < 1e-5
    assert rel(w, w_ref) < 1e-5 and rel(b, b_ref) < 1e-5


def test_backward_matches_jax_vjp_float32(fwd_bwd_f32, tol=1e-4):
    _, _, got, ref, _ = fwd_bwd_f32
    dq, dk, dv, dlr, ds, (dw, db), dlns, dlnb = got
    rq, rk, rv, rlr, rs, (rw, rb), rlns, rlnb = ref
    for name, a, r in (("q", dq, rq), ("k", dk, rk), ("v", dv, rv), ("lr", dlr, rlr), ("token_scale", ds.sum(0), rs),
                       ("w1", dw, rw), ("b1", db, rb), ("ln_scale", dlns, rlns), ("ln_bias", dlnb, rlnb)):
        assert a.shape == r.shape and rel(a, r) < tol, name


def test_wide_backward_kernel_f128_matches_jax_vjp_float32():
    """F = 128: the backward kernel's own layout (gpu_backward._backward_wide: weights rebuilt from the
    boundary and G2, dL/dW carried in global memory, per-mini-batch output slabs); two tiles of K = 32,
    the boundary states from the XLA scan (the forward kernel at F = 128 is checked in the slow test)."""
    args, ref = _wide_case(12)
    got = jax.jit(functools.partial(gpu_backend.backward, spec(mbs=32)))(*args)
    test_backward_matches_jax_vjp_float32((None, None, got, ref, None))


@pytest.mark.slow
def test_wide_backward_kernel_f128_k16_bf16():
    """F = 128, K = 16 (four mini-batches per tile), bfloat16 wgmma operands (what the GPU runs): < 2e-2."""
    fb = _fwd_bwd_f32(N=2, mbs=16, F=128, matmul_dtype="bfloat16")
    (z, (w, b), _), (z_ref, (w_ref, b_ref)), _, _, _ = fb
    assert rel(z, z_ref) < 2e-2 and rel(w, w_ref) < 2e-2
    test_backward_matches_jax_vjp_float32(fb, tol=2e-2)


def test_any_remat_group_pads_to_whole_tiles():
    """remat_group=1 (T = 32: half a tile): the backend pads with zero rates; forward and gradients exact."""
    x = flat_inputs(N=1, T=32, seed=11)
    sp = gpu_backend.GPUSpec(learner=LINEAR, backend="gpu", group=1, eps=1e-6, interpret=True, matmul_dtype="float32")
    (z_ref, w_ref), vjp = jax.vjp(xla_full, *x)
    z, w_end, bounds = jax.jit(functools.partial(gpu_backend.forward, sp))(*x)
    assert z.shape == z_ref.shape and rel(z, z_ref) < 1e-5 and rel(w_end[0], w_ref[0]) < 1e-5
    rng = np.random.default_rng(3)
    dz = jnp.asarray(rng.standard_normal(z_ref.shape), jnp.float32)
    dws = tuple(jnp.asarray(rng.standard_normal(w.shape), jnp.float32) for w in w_ref)
    got = jax.jit(functools.partial(gpu_backend.backward, sp))(*x[:5], bounds, *x[6:], dz, dws)
    got = (*got[:4], got[4].sum(0), *got[5:])
    for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(vjp((dz, dws)))):
        assert a.shape == r.shape and rel(a, r) < 1e-4


def test_boundary_states_are_the_weights_at_each_tile_start(fwd_bwd_f32):
    (_, _, (w_b, b_b)), _, _, _, x = fwd_bwd_f32
    half = tuple(a[:, :64] for a in x[:4])
    _, (w_mid, b_mid) = xla_full(*half, *x[4:])
    assert rel(w_b[:, 0], x[5][0]) < 1e-7 and rel(w_b[:, 1], w_mid) < 1e-5 and rel(b_b[:, 1], b_mid) < 1e-5


def _entry(q, k, v, lr, s, w, lns, lnb, *, impl, state=None, config=GPU):
    return api.ttt_linear(q, k, v, lr, s, w, lns, lnb, mini_batch_size=K, state=state, impl=impl,
                          kernel_config=config if impl == "pallas" else None)


@pytest.mark.slow
def test_entry_bf16_tail_and_gradients():
    """Through ttt_linear(impl="pallas"): T not a multiple of K (the tail runs in XLA), bfloat16 operands."""
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_linear", B=1, H=2, T=64 + 7, F=64, K=K, seed=4,
                                                 weight_scale=0.05)

    def loss(impl, q, k, v, lr, s, w, lns, lnb):
        z, st = _entry(q, k, v, lr, s, w, lns, lnb, impl=impl)
        return (z * jnp.cos(z)).sum() + (st.weights["w1"] ** 2).sum(), (z, st)

    args = (q, k, v, lr, s, w, lns, lnb)
    (_, (z, st)), g = jax.value_and_grad(functools.partial(loss, "pallas"), argnums=range(8), has_aux=True)(*args)
    (_, (zr, sr)), gr = jax.value_and_grad(functools.partial(loss, "xla"), argnums=range(8), has_aux=True)(*args)
    assert rel(z, zr) < 2e-2
    assert st.pos == 7 and rel(st.acc["w1"], sr.acc["w1"]) < 2e-2 and rel(st.weights["w1"], sr.weights["w1"]) < 2e-2
    for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(gr)):
        assert rel(a, r) < 2e-2


T1 = 9


def _seq_inputs(S, T):
    return random_inputs("ttt_linear", B=S, H=1, T=T, F=64, K=K, seed=5, weight_scale=0.05)


def test_entry_continuation_and_vmap():
    """A state returned mid-mini-batch continues (head in XLA, then the kernel, then a tail in XLA),
    under vmap over a leading sample axis; bfloat16 operands."""
    S, T2 = 2, 64 + 3
    q, k, v, lr, s, w, lns, lnb = _seq_inputs(S, T1 + T2)
    add_axis = lambda a: a[:, None]  # [S, 1(B), H, T, ...]
    qs, ks, vs, lrs = (add_axis(a) for a in (q, k, v, lr))

    def two_calls(q, k, v, lr):
        z1, st = _entry(q[..., :T1, :], k[..., :T1, :], v[..., :T1, :], lr[..., :T1], s, w, lns, lnb, impl="pallas")
        z2, st = _entry(q[..., T1:, :], k[..., T1:, :], v[..., T1:, :], lr[..., T1:], s, w, lns, lnb,
                        impl="pallas", state=st)
        return jnp.concatenate([z1, z2], axis=2), st.weights["w1"]

    z, w_end = jax.jit(jax.vmap(two_calls))(qs, ks, vs, lrs)
    zr, sr = _entry(q, k, v, lr, s, w, lns, lnb, impl="xla")
    assert rel(z[:, 0], zr) < 2e-2 and rel(w_end[:, 0], sr.weights["w1"]) < 2e-2


def test_decode_kernel_under_vmap_equals_the_full_pass():
    """Best-of-N style: a jitted one-token step (the decode kernel, float32) vmapped over samples with their
    own states at different positions; each commits at its mini-batch end; equals the full XLA pass."""
    S, n_dec = 2, 3
    starts = (14, 13)  # sample 0 commits at its 2nd step, sample 1 at its 3rd
    q, k, v, lr, s, w, lns, lnb = _seq_inputs(S, max(starts) + n_dec)
    per = lambda a, i: a[i:i + 1]  # sample i as a batch of 1
    states, refs, toks = [], [], []
    for i, t0 in enumerate(starts):
        xi = [per(a, i) for a in (q, k, v, lr)]
        zr, _ = _entry(*(a[..., :t0 + n_dec, :] if a.ndim == 4 else a[..., :t0 + n_dec] for a in xi),
                       s, w, lns, lnb, impl="xla")
        _, st = _entry(*(a[..., :t0, :] if a.ndim == 4 else a[..., :t0] for a in xi), s, w, lns, lnb, impl="xla")
        states.append(jax.tree.map(jnp.asarray, st))
        refs.append(zr[..., t0:, :])
        toks.append([a[..., t0:t0 + n_dec, :] if a.ndim == 4 else a[..., t0:t0 + n_dec] for a in xi])
    state = jax.tree.map(lambda *a: jnp.stack(a), *states)
    xs = [jnp.stack([toks[i][j] for i in range(S)]) for j in range(4)]
    step = jax.jit(jax.vmap(lambda st, qt, kt, vt, lrt: _entry(qt, kt, vt, lrt, s, w, lns, lnb, impl="pallas",
                                                               state=st)))
    zs = []
    for t in range(n_dec):
        zt, state = step(state, *(a[..., t:t + 1, :] if a.ndim == 5 else a[..., t:t + 1] for a in xs))
        zs.append(zt)
    z = jnp.concatenate(zs, axis=3)
    assert rel(z, jnp.stack(refs)) < 1e-5


@pytest.mark.slow
def test_vmap_of_gradients_through_the_kernels():
    """jax.vmap over samples of jax.grad through the custom_vjp: forward and backward kernels batched."""
    S = 2
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_linear", B=S, H=1, T=64, F=64, K=K, seed=9,
                                                 weight_scale=0.05)

    def loss(impl, q, k, v, lr, w):
        z, _ = _entry(q[None], k[None], v[None], lr[None], s, w, lns, lnb, impl=impl)
        return (z * jnp.cos(z)).sum()

    grads = {impl: jax.jit(jax.vmap(jax.grad(functools.partial(loss, impl), argnums=(0, 1, 2, 3, 4)),
                                    in_axes=(0, 0, 0, 0, None)))(q, k, v, lr, w) for impl in ("pallas", "xla")}
    for a, b in zip(jax.tree.leaves(grads["pallas"]), jax.tree.leaves(grads["xla"])):
        assert rel(a, b) < 2e-2


@pytest.mark.slow
def test_forward_under_the_gpu_race_detector():
    """InterpretGPUParams(detect_races=True): shared-memory reads/writes vs TMA copies between the
    interpreter's threads (it models warpgroups, not the threads inside one)."""
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks

    x = flat_inputs(N=1, T=128, mbs=32)
    sp = gpu_backend.GPUSpec(learner=LINEAR, backend="gpu", group=2, eps=1e-6, interpret=True,
                             matmul_dtype="float32", detect_races=True)
    z, _, _ = jax.block_until_ready(jax.jit(functools.partial(gpu_backend.forward, sp))(*x))
    assert rel(z, xla_full(*x)[0]) < 1e-5
    assert not gpu_callbacks.get_races().races_found


def _wide_case(seed):
    """F = 128, K = 32, two tiles of one sequence: backend backward arguments (boundaries from the XLA scan)
    and the reference cotangents from jax.vjp of the XLA scan."""
    x = flat_inputs(N=1, T=128, F=128, seed=seed, mbs=32)
    (z_ref, w_ref), vjp = jax.vjp(xla_full, *x)
    rng = np.random.default_rng(seed + 100)
    dz = jnp.asarray(rng.standard_normal(z_ref.shape), jnp.float32)
    dws = tuple(jnp.asarray(rng.standard_normal(w.shape), jnp.float32) for w in w_ref)
    _, w_mid = xla_full(*(a[:, :64] for a in x[:4]), *x[4:])
    bounds = tuple(jnp.stack([a, b], axis=1) for a, b in zip(x[5], w_mid))
    return (*x[:5], bounds, *x[6:], dz, dws), vjp((dz, dws))


@pytest.mark.slow
def test_wide_backward_under_vmap():
    """jax.vmap of the F = 128 backward kernel (its dL/dW carry is read back from an output buffer)."""
    cases = [_wide_case(seed) for seed in (20, 21)]
    args = jax.tree.map(lambda *a: jnp.stack(a), *(c[0] for c in cases))
    got = jax.jit(jax.vmap(functools.partial(gpu_backend.backward, spec(mbs=32))))(*args)
    for i, (_, ref) in enumerate(cases):
        gi = jax.tree.map(lambda a: a[i], got)
        test_backward_matches_jax_vjp_float32((None, None, gi, ref, None))


@pytest.mark.slow
def test_wide_backward_under_the_gpu_race_detector():
    """The F = 128 backward's TMA traffic through one staging tile (loads, K-row output slabs, the dL/dW
    carry's read-modify-write in global memory) under InterpretGPUParams(detect_races=True)."""
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks

    sp = gpu_backend.GPUSpec(learner=LINEAR, backend="gpu", group=2, eps=1e-6, interpret=True,
                             matmul_dtype="float32", detect_races=True)
    args, ref = _wide_case(13)
    got = jax.block_until_ready(jax.jit(functools.partial(gpu_backend.backward, sp))(*args))
    assert not gpu_callbacks.get_races().races_found
    test_backward_matches_jax_vjp_float32((None, None, got, ref, None))


def _lower(fn, *shapes):
    return jax.jit(fn).trace(*shapes).lower(lowering_platforms=("cuda",))


def _sds(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _lower_shapes(T, F, N, backward=True):
    sp = spec(interpret=False, matmul_dtype="bfloat16")
    x = (_sds(N, T, F),) * 3 + (_sds(N, T, 1), _sds(K, 1), (_sds(N, F, F), _sds(N, 1, F)), _sds(N, 1, F),
                                _sds(N, 1, F))
    _lower(functools.partial(gpu_backend.forward, sp), *x)
    if backward:
        nt = T // 64
        _lower(functools.partial(gpu_backend.backward, sp), *x[:5], (_sds(N, nt, F, F), _sds(N, nt, 1, F)), *x[6:],
               _sds(N, T, F), (_sds(N, F, F), _sds(N, 1, F)))
    dec = (_sds(N, F),) * 3 + (_sds(N, 1), _sds(1, 2), _sds(N, F), _sds(N, F), (_sds(N, F, F), _sds(N, 1, F)),
                               (_sds(N, F, F), _sds(N, 1, F)))
    _lower(functools.partial(gpu_backend.decode, sp), *dec)


def test_cross_lowering_for_cuda_at_a_benchmark_shape():
    _lower_shapes(2048, 64, 512)


def _backward_smem_bytes(F):
    """The Mosaic GPU lowering's shared-memory count of the backward kernel (read off its overflow error
    with the bound lowered to 1 byte)."""
    import re

    from jax.experimental.mosaic.gpu import core as mgpu_core

    N, T = 2, 128
    sp = spec(interpret=False, matmul_dtype="bfloat16")
    x = (_sds(N, T, F),) * 3 + (_sds(N, T, 1), _sds(K, 1), (_sds(N, 2, F, F), _sds(N, 2, 1, F)), _sds(N, 1, F),
                                _sds(N, 1, F), _sds(N, T, F), (_sds(N, F, F), _sds(N, 1, F)))
    if not hasattr(mgpu_core, "_SMEM_SIZE_BOUND"):  # private knob (JAX 0.10.2 / 0.11)
        pytest.skip("this JAX has no mosaic.gpu.core._SMEM_SIZE_BOUND to read the count with")
    bound, mgpu_core._SMEM_SIZE_BOUND = mgpu_core._SMEM_SIZE_BOUND, 1
    try:
        with pytest.raises(ValueError, match="smem_bytes") as err:
            _lower(functools.partial(gpu_backend.backward, sp), *x)
    finally:
        mgpu_core._SMEM_SIZE_BOUND = bound
    return int(re.search(r"smem_bytes=(\d+)", str(err.value)).group(1))


def test_wide_backward_fits_hopper_shared_memory():
    """The lowering's count is what it enforces (F = 128: 227,400 of 232,448 bytes in JAX 0.10.2; F = 64:
    222,272); the wide layout must stay within the limit, and F = 64 keeps its layout."""
    wide, narrow = _backward_smem_bytes(128), _backward_smem_bytes(64)
    assert 200_000 < wide <= 232_448 and 200_000 < narrow <= 232_448


@pytest.mark.slow
@pytest.mark.parametrize("T", [2048, 8192, 32768])
@pytest.mark.parametrize("F", [64, 128])
def test_cross_lowering_for_cuda_at_all_benchmark_shapes(T, F):
    _lower_shapes(T, F, 512)


def test_cross_lowering_catches_shared_memory_overflow():
    """The lowering enforces Hopper's shared-memory limit (so the checks above can fail)."""
    sp = spec(interpret=False, matmul_dtype="bfloat16")
    ts = gpu_backend._tile_spec(sp, 64, K)
    big = gpu_forward.GPUTileSpec(F=256, K=K, eps=1e-6, operand_dtype="bfloat16", interpret=False)
    del ts
    N, T, F = 2, 128, 256
    x = (jax.ShapeDtypeStruct((N, T, F), jnp.bfloat16),) * 3 + (_sds(N, T),) * 2 + (_sds(64), _sds(N, F, F)) + (
        _sds(N, F),) * 3
    with pytest.raises(Exception, match="(?i)shared memory|smem"):
        _lower(functools.partial(gpu_forward.forward, big), *x)


def test_unsupported_shapes_raise_clear_errors():
    assert "F=96" in gpu_backend.unsupported(LINEAR, 96, K)
    assert "mini_batch_size=12" in gpu_backend.unsupported(LINEAR, 64, 12)
    assert gpu_backend.unsupported(LINEAR, 128, K) is None
    with pytest.raises(ValueError, match="float32"):
        gpu_backend.forward(spec(interpret=False), *flat_inputs(N=1, T=64))


# -- on a Hopper GPU, compiled (benchmarks/gpu_check.sh runs `pytest -m gpu tests/kernels`) -------------

@pytest.mark.gpu
@pytest.mark.parametrize("F", [64, 128])
def test_compiled_gpu_kernels_match_xla(F):
    """The Mosaic GPU kernels compiled (no interpreter), bfloat16 operands, against the XLA scan:
    forward, final state and gradients (the backward kernel at F = 64 and its wide layout at F = 128),
    then decode steps."""
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU")
    cfg = TTTKernelConfig(backend="gpu", interpret=False)
    q, k, v, lr, s, w, lns, lnb = random_inputs("ttt_linear", B=2, H=4, T=64 * 3 + 5, F=F, K=K, seed=7,
                                                 weight_scale=0.02, lr_range=(0.0, 1.0 / F))
    proj = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

    def loss(impl, q, k, v, lr, w):
        z, st = _entry(q, k, v, lr, s, w, lns, lnb, impl=impl, config=cfg)
        return (z * proj).sum() + (st.weights["w1"] ** 2).sum(), (z, st)

    outs = {impl: jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=range(5), has_aux=True))(
        q, k, v, lr, w) for impl in ("pallas", "xla")}
    (_, (z, st)), g = outs["pallas"]
    (_, (z0, st0)), g0 = outs["xla"]
    assert rel(z, z0) < 2e-2 and rel(st.weights["w1"], st0.weights["w1"]) < 2e-2
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
        assert rel(a, b) < 5e-2
    step = jax.jit(lambda st, *a: _entry(*a, s, w, lns, lnb, impl="pallas", state=st, config=cfg))
    state = jax.tree.map(jnp.asarray, st0)
    extra = random_inputs("ttt_linear", B=2, H=4, T=K, F=F, K=K, seed=8, weight_scale=0.02, lr_range=(0.0, 1.0 / F))
    zs = []
    for t in range(K):
        zt, state = step(state, *(a[:, :, t:t + 1] for a in extra[:4]))
        zs.append(zt)
    z_ref, _ = _entry(*extra[:4], s, w, lns, lnb, impl="xla", state=st0)
    assert rel(jnp.concatenate(zs, axis=2), z_ref) < 1e-4
