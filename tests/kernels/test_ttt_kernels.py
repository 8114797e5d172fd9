"""The fused TTT kernels (Mosaic TPU pallas_call, CPU interpret mode) against the XLA scan.

One compile per (kind, impl) for the big check: a prefix call that leaves a mini-batch open, then a
call that finishes it (XLA head), runs full mini-batches through the kernels (padded to whole
groups) and leaves a partial tail; forward outputs, the carried state, and the gradients of a
random projection of everything with respect to every input.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.kernels import TTTKernelConfig
from ttc_jax.kernels.common import tpu_backward, tpu_decode, tpu_forward
from ttc_jax.kernels.common.registry import KernelSpec
from ttc_jax.ttt import LEARNERS, TTTState, ttt
from ttc_jax.ttt.api import _resolve_impl
from ttc_jax.ttt.testing import random_inputs

KINDS = ["ttt_linear", "ttt_mlp"]
K, PREFIX, T = 8, 3, 42  # head 5 tokens, 4 full mini-batches (2 groups of 2), tail 5 tokens
ARG_NAMES = ("q", "k", "v", "lr", "token_scale", "weights", "ln_scale", "ln_bias")


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _cut(args, i, j):
    q, k, v, lr, *rest = args
    return (q[:, :, i:j], k[:, :, i:j], v[:, :, i:j], lr[:, :, i:j], *rest)


def _two_calls(kind, impl, args):
    """A prefix that leaves the state mid-mini-batch, then the rest."""
    kw = dict(mini_batch_size=K, impl=impl, remat_group=2)
    z0, state = ttt(kind, *_cut(args, 0, PREFIX), **kw)
    z1, state = ttt(kind, *_cut(args, PREFIX, PREFIX + T), state=state, **kw)
    return jnp.concatenate([z0, z1], axis=2), state


@functools.cache
def _results(kind, impl):
    args = random_inputs(kind, B=2, H=2, T=PREFIX + T, F=8, K=K, seed=11)
    rng = np.random.default_rng(5)
    proj_z = jnp.asarray(rng.standard_normal((2, 2, PREFIX + T, 8)), jnp.float32)

    def loss(*a):
        z, state = _two_calls(kind, impl, a)
        tot = (z * proj_z).sum()
        for tree in (state.weights, state.acc):
            for n in sorted(tree):
                tot = tot + (jnp.cos(jnp.arange(tree[n].size, dtype=jnp.float32)).reshape(tree[n].shape) * tree[n]).sum()
        return tot, (z, state)

    (_, (z, state)), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(8)), has_aux=True))(*args)
    return z, state, grads


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "ttt_mlp" else k for k in KINDS])
def test_forward_state_and_gradients_match_xla(kind):
    z, state, grads = _results(kind, "pallas")
    z0, state0, grads0 = _results(kind, "xla")
    assert rel(z, z0) < 1e-5
    assert int(state.pos) == int(state0.pos) == (PREFIX + T) % K
    for n in state0.weights:
        assert rel(state.weights[n], state0.weights[n]) < 1e-5, n
        assert rel(state.acc[n], state0.acc[n]) < 1e-5, n
    for name, g, g0 in zip(ARG_NAMES, grads, grads0):
        for leaf, leaf0 in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
            assert np.isfinite(np.asarray(leaf)).all(), name
            assert rel(leaf, leaf0) < 1e-4, name


def test_the_kernel_path_is_taken():
    """Guard against a silent fallback: impl="pallas" traces to the forward kernel, its gradient to the backward."""
    args = random_inputs("ttt_linear", B=1, H=1, T=2 * K, F=8, K=K, seed=2)
    f = lambda *a: ttt("ttt_linear", *a, mini_batch_size=K, impl="pallas", remat_group=1)[0].sum()
    assert "ttt_linear_fwd" in str(jax.make_jaxpr(f)(*args))
    assert "ttt_linear_bwd" in str(jax.make_jaxpr(jax.grad(f))(*args))


def test_vmap_over_a_leading_sample_axis_and_bf16():
    """vmap over S samples of q/k/v/lr (shared weights) equals a loop of XLA calls; bf16 inputs close."""
    S = 2
    args = random_inputs("ttt_linear", B=1, H=2, T=2 * K + 3, F=8, K=K, seed=4)
    rng = np.random.default_rng(0)
    q, k, v, lr, *rest = args
    bump = lambda a: jnp.stack([a, a + 0.1 * jnp.asarray(rng.standard_normal(a.shape), a.dtype)])
    qs, ks, vs = bump(q), bump(k), bump(v)
    lrs = jnp.stack([lr, lr * 1.5])
    run = lambda impl, dtype: jax.jit(jax.vmap(
        lambda q, k, v, lr: ttt("ttt_linear", q.astype(dtype), k.astype(dtype), v.astype(dtype), lr, *rest,
                                mini_batch_size=K, impl=impl, remat_group=2)[0]))(qs, ks, vs, lrs)
    z = run("pallas", jnp.float32)
    z_loop = jnp.stack([ttt("ttt_linear", qs[i], ks[i], vs[i], lrs[i], *rest, mini_batch_size=K, impl="xla")[0]
                        for i in range(S)])
    assert rel(z, z_loop) < 1e-5
    z16 = run("pallas", jnp.bfloat16)
    assert z16.dtype == jnp.bfloat16
    assert rel(z16.astype(jnp.float32), z_loop) < 2e-2


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_vmap_of_gradients(kind):
    """jax.vmap over samples of jax.grad through the custom_vjp (forward and backward kernels batched)."""
    args = random_inputs(kind, B=1, H=2, T=2 * K + 3, F=8, K=K, seed=12)
    q, k, v, lr, *rest = args
    qs = jnp.stack([q, q[..., ::-1]])

    def grads(impl):
        loss = lambda q, k, v, lr, w: (ttt(kind, q, k, v, lr, rest[0], w, *rest[2:], mini_batch_size=K, impl=impl,
                                           remat_group=1)[0] ** 2).sum()
        return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), in_axes=(0, None, None, None, None)))(
            qs, k, v, lr, rest[1])

    for a, b in zip(jax.tree.leaves(grads("pallas")), jax.tree.leaves(grads("xla"))):
        assert rel(a, b) < 1e-4


def test_bf16_matmul_operands_option():
    """TTTKernelConfig(matmul_dtype="bfloat16"): bf16 operands, float32 accumulation and state; close to float32,
    and not identical (the option reaches the kernel)."""
    args = random_inputs("ttt_linear", B=1, H=2, T=2 * K, F=8, K=K, seed=13, weight_scale=0.02,
                         lr_range=(0.0, 1.0 / 8))
    z0, _ = ttt("ttt_linear", *args, mini_batch_size=K, impl="xla")
    z, _ = jax.jit(lambda *a: ttt("ttt_linear", *a, mini_batch_size=K, impl="pallas", remat_group=1,
                                  kernel_config=TTTKernelConfig(matmul_dtype="bfloat16")))(*args)
    assert 0 < rel(z, z0) < 2e-2
    with pytest.raises(ValueError, match="matmul_dtype='float16'"):
        TTTKernelConfig(matmul_dtype="float16")


@pytest.mark.parametrize("kind", ["ttt_linear", pytest.param("ttt_mlp", marks=pytest.mark.slow)])
def test_decode_steps_equal_the_full_pass(kind):
    """Prefill 5 tokens with the kernels, then one-token jitted steps (traced position: the decode kernel)."""
    n_tok, n_pre = K + 5, 5
    args = random_inputs(kind, B=2, H=2, T=n_tok, F=8, K=K, seed=6)
    z_full, s_full = ttt(kind, *args, mini_batch_size=K, impl="xla")
    _, state = ttt(kind, *_cut(args, 0, n_pre), mini_batch_size=K, impl="pallas")
    state = TTTState(weights=state.weights, acc=state.acc, pos=jnp.asarray(state.pos, jnp.int32))
    step = jax.jit(lambda st, *a: ttt(kind, *a, mini_batch_size=K, impl="pallas", state=st))
    zs = []
    for t in range(n_pre, n_tok):
        z, state = step(state, *_cut(args, t, t + 1))
        zs.append(z)
    assert rel(jnp.concatenate(zs, axis=2), z_full[:, :, n_pre:]) < 1e-5
    assert int(state.pos) == int(s_full.pos)
    for n in s_full.weights:
        assert rel(state.weights[n], s_full.weights[n]) < 1e-5
        assert rel(state.acc[n], s_full.acc[n]) < 1e-5


def test_decode_kernel_under_vmap_over_samples():
    """Best-of-N style: a jitted one-token step vmapped over S samples with their own states and positions
    (one of them ends its mini-batch and commits), against the same vmapped step on the XLA path."""
    kind, S = "ttt_linear", 3
    args = random_inputs(kind, B=S, H=2, T=1, F=8, K=K, seed=7)
    rng = np.random.default_rng(3)
    r = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    shapes = LEARNERS[kind].weight_shapes(2, 8)
    state = TTTState(weights={n: 0.3 * r(S, 1, *sh) for n, sh in shapes.items()},
                     acc={n: 0.1 * r(S, 1, *sh) for n, sh in shapes.items()},
                     pos=jnp.asarray([K - 1, 1, 4], jnp.int32))
    xs = tuple(a[:, None] for a in args[:4])  # [S, 1, H, 1, ...]: one sequence per sample
    step = lambda impl: jax.jit(jax.vmap(lambda st, q, k, v, lr: ttt(
        kind, q, k, v, lr, *args[4:], mini_batch_size=K, impl=impl, state=st)))
    (z, new), (z0, new0) = step("pallas")(state, *xs), step("xla")(state, *xs)
    assert rel(z, z0) < 1e-5
    np.testing.assert_array_equal(new.pos, new0.pos)
    for n in new0.weights:
        assert rel(new.weights[n], new0.weights[n]) < 1e-5
        assert rel(new.acc[n], new0.acc[n]) < 1e-5
    assert rel(new.weights["w1"][0], state.weights["w1"][0]) > 1e-3  # sample 0 committed


def test_dispatch_rules_and_clear_errors():
    args = random_inputs("ttt_linear", B=1, H=1, T=K, F=8, K=K, seed=1)
    q = args[0]
    # auto is XLA on the CPU; pallas runs there in interpret mode
    assert _resolve_impl(LEARNERS["ttt_linear"], "auto", q, K, False, None) == "xla"
    assert _resolve_impl(LEARNERS["ttt_linear"], "pallas", q, K, False, None) == "pallas"
    bad = [
        (dict(kernel_config=TTTKernelConfig(interpret=False)), "compile only on"),
        (dict(kernel_config=TTTKernelConfig(backend="gpu", interpret=True)), None),  # GPU backend, if installed
        (dict(return_stats=True), "return_stats=True is not supported"),
    ]
    for kw, match in bad:
        if match is None:
            continue
        with pytest.raises(ValueError, match=match):
            ttt("ttt_linear", *args, mini_batch_size=K, impl="pallas", **kw)
    q12 = random_inputs("ttt_mlp", B=1, H=1, T=K, F=12, K=K, seed=1)
    with pytest.raises(ValueError, match="head width F=12"):
        ttt("ttt_mlp", *q12, mini_batch_size=K, impl="pallas")
    with pytest.raises(ValueError, match="dtype float64"):
        from ttc_jax.kernels.ttt_linear import unsupported
        raise ValueError(unsupported((1, 1, K, 8), jnp.float64, K, False))
    with pytest.raises(ValueError, match="mini_batches_per_group=0"):
        TTTKernelConfig(mini_batches_per_group=0)
    with pytest.raises(ValueError, match="backend='cuda'"):
        TTTKernelConfig(backend="cuda")


# -- cross-lowering for TPU at the benchmark shapes (block shapes, memory spaces, primitives) ------------

def _lower_all(kind, F, N=512, T=8192, group=4):
    learner = LEARNERS[kind]
    spec = KernelSpec(learner=learner, backend="tpu", group=group, eps=1e-6, interpret=False)
    shapes = learner.weight_shapes(1, F)
    names = [f"{p}{i}" for i in range(1, learner.n_layers + 1) for p in ("w", "b")]
    sds = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    ws = tuple(sds(N, *shapes[n][1:]) for n in names)
    wb = tuple(sds(N, T // (group * 16), *shapes[n][1:]) for n in names)
    x, lr, s, ln = sds(N, T, F), sds(N, T, 1), sds(16, 1), sds(N, 1, F)
    row, col = sds(N, F), sds(N, 1)
    lower = lambda f, *a: jax.jit(f).trace(*a).lower(lowering_platforms=("tpu",))
    lower(functools.partial(tpu_forward.forward, spec), x, x, x, lr, s, ws, ln, ln)
    inference = dataclasses.replace(spec, save_bounds=False, matmul_dtype="bfloat16")
    lower(functools.partial(tpu_forward.forward, inference), x, x, x, lr, s, ws, ln, ln)
    lower(functools.partial(tpu_backward.backward, spec), x, x, x, lr, s, wb, ln, ln, x, ws)
    x16 = jax.ShapeDtypeStruct((N, T, F), jnp.bfloat16)  # bf16 inputs, output cotangent and matmul operands
    lower(functools.partial(tpu_backward.backward, dataclasses.replace(spec, matmul_dtype="bfloat16")),
          x16, x16, x16, lr, s, wb, ln, ln, x16, ws)
    lower(functools.partial(tpu_decode.decode, spec), row, row, row, col, sds(1, 2), row, row, ws, ws)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("F", [64, 128])
def test_cross_lowers_for_tpu(kind, F):
    _lower_all(kind, F)


def test_cross_lowering_catches_a_bad_block_shape():
    """The check above can fail: a token block of 12 rows breaks the TPU (8, 128) rule."""
    with pytest.raises(Exception, match="divisible by 8"):
        _lower_bad()


def _lower_bad():
    from jax.experimental import pallas as pl

    def k(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    spec = pl.BlockSpec((None, 12, 64), lambda i: (i, 0, 0))
    f = lambda x: pl.pallas_call(k, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(2,), in_specs=[spec],
                                 out_specs=spec)(x)
    jax.jit(f).trace(jax.ShapeDtypeStruct((2, 24, 64), jnp.float32)).lower(lowering_platforms=("tpu",))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_tpu_kernels_under_the_race_detector(kind):
    """Forward, backward and decode under pltpu.InterpretParams(detect_races=True), equal to the XLA scan."""
    args = random_inputs(kind, B=1, H=2, T=2 * K, F=8, K=K, seed=8)
    cfg = TTTKernelConfig(interpret=True, detect_races=True)
    f = lambda impl, *a: ttt(kind, *a, mini_batch_size=K, impl=impl, remat_group=1,
                             **({"kernel_config": cfg} if impl == "pallas" else {}))[0]
    z = f("pallas", *args)
    assert rel(z, f("xla", *args)) < 1e-5
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
    assert tpu_interpreter.races is not None and not tpu_interpreter.races.races_found
    g = jax.grad(lambda q: (f("pallas", q, *args[1:]) ** 2).sum())(args[0])
    g0 = jax.grad(lambda q: (f("xla", q, *args[1:]) ** 2).sum())(args[0])
    assert rel(g, g0) < 1e-4
    # the detector reports through module state of the (private) TPU interpreter
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
    assert tpu_interpreter.races is not None, "the race detector did not run"
    assert not tpu_interpreter.races.races_found


# -- on a GPU/TPU: the compiled kernels (benchmarks/gpu_check.sh runs these) ---------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("F", [64, 128])
def test_compiled_kernels_match_xla_on_the_accelerator(kind, F):
    """impl="pallas" compiled for the present accelerator vs the XLA scan: bf16 inputs (operands may be bf16 on
    the device), head + full mini-batches + tail, forward, state and gradients; then decode steps."""
    if jax.default_backend() not in ("gpu", "tpu"):
        pytest.skip("needs a GPU or TPU")
    Kd, T = 16, 16 * 8 + 7
    args = random_inputs(kind, B=2, H=4, T=T, F=F, K=Kd, seed=3, weight_scale=0.02, lr_range=(0.0, 1.0 / F))
    args = (*(a.astype(jnp.bfloat16) for a in args[:3]), *args[3:])
    from ttc_jax.kernels import ttt_linear as op_linear, ttt_mlp as op_mlp
    reason = (op_linear if kind == "ttt_linear" else op_mlp).unsupported(args[0].shape, args[0].dtype, Kd, False)
    if reason:  # a shape this device's backend does not take: a clear error, never a silent fallback
        with pytest.raises(ValueError):
            ttt(kind, *args, mini_batch_size=Kd, impl="pallas")
        return
    proj = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, T, F)), jnp.float32)

    def loss(impl, *a):
        z, st = ttt(kind, *_cut(a, 0, 3), mini_batch_size=Kd, impl=impl)
        z2, st = ttt(kind, *_cut(a, 3, T), mini_batch_size=Kd, impl=impl, state=st)
        z = jnp.concatenate([z, z2], axis=2).astype(jnp.float32)
        return (z * proj).sum(), (z, st)

    out = {impl: jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2, 3, 5), has_aux=True))(*args)
           for impl in ("pallas", "xla")}
    (_, (z, st)), g = out["pallas"]
    (_, (z0, st0)), g0 = out["xla"]
    assert rel(z, z0) < 2e-2
    for n in st0.weights:
        assert rel(st.weights[n], st0.weights[n]) < 2e-2
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
        assert rel(a.astype(jnp.float32), b.astype(jnp.float32)) < 5e-2
    state = TTTState(weights=st.weights, acc=st.acc, pos=jnp.asarray(st.pos, jnp.int32))
    step = jax.jit(lambda s, *a: ttt(kind, *a, mini_batch_size=Kd, impl="pallas", state=s))
    zs = []
    extra = random_inputs(kind, B=2, H=4, T=Kd, F=F, K=Kd, seed=4, weight_scale=0.02, lr_range=(0.0, 1.0 / F))
    for t in range(Kd):
        z, state = step(state, *_cut(extra, t, t + 1)[:4], *args[4:])
        zs.append(z)
    z_ref, _ = ttt(kind, *extra[:4], *args[4:], mini_batch_size=Kd, impl="xla", state=st0)
    assert rel(jnp.concatenate(zs, axis=2), z_ref) < 2e-2
