"""Carried state, traced-position decoding, remat memory, stats, dtypes and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from ttc_jax.ttt.testing import random_inputs
from ttc_jax.ttt import LEARNERS, TTTState, ttt, ttt_linear, ttt_mlp

KINDS = ["ttt_linear", "ttt_mlp"]


def _slice(args, start, stop):
    q, k, v, lr, *rest = args
    return (q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], lr[:, :, start:stop], *rest)


@pytest.mark.parametrize("kind", KINDS)
# default-run budget: a cut on the mini-batch boundary and three cuts inside mini-batches by default; the
# single mid-mini-batch cut (covered by the three) and the other sets run with the slow set
@pytest.mark.parametrize("cuts", [pytest.param((5,), marks=pytest.mark.slow), (16,),
                                  pytest.param((3, 4), marks=pytest.mark.slow), (20, 21, 30),
                                  pytest.param((1, 2, 3), marks=pytest.mark.slow)])
def test_split_and_continue_equals_whole(kind, cuts):
    args = random_inputs(kind, T=37, seed=3)
    z_whole, s_whole = ttt(kind, *args, impl="xla")
    bounds = (0, *cuts, 37)
    state, zs = None, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        z, state = ttt(kind, *_slice(args, a, b), impl="xla", state=state)
        zs.append(z)
    np.testing.assert_allclose(jnp.concatenate(zs, axis=2), z_whole, rtol=2e-5, atol=2e-5)
    for n in s_whole.weights:
        np.testing.assert_allclose(state.weights[n], s_whole.weights[n], rtol=2e-5, atol=2e-6)
    assert int(state.pos) == int(s_whole.pos) == 37 % 16


@pytest.mark.parametrize("kind", KINDS)
def test_jitted_decode_with_traced_state_equals_whole(kind):
    """Prefill 5 tokens, then a jitted one-token step (traced position), then a traced 2-token chunk."""
    T = 21
    args = random_inputs(kind, T=T, seed=4)
    z_whole, s_whole = ttt(kind, *args, impl="xla")

    @jax.jit
    def step(q, k, v, lr, state):
        return ttt(kind, q, k, v, lr, *args[4:], state=state, impl="xla")

    z0, state = ttt(kind, *_slice(args, 0, 5), impl="xla")
    zs = [z0]
    for t in range(5, T - 2):
        z, state = step(*_slice(args, t, t + 1)[:4], state)
        zs.append(z)
    z, state = step(*_slice(args, T - 2, T)[:4], state)  # multi-token chunk, traced position
    zs.append(z)
    np.testing.assert_allclose(jnp.concatenate(zs, axis=2), z_whole, rtol=2e-5, atol=2e-5)
    for n in s_whole.weights:
        np.testing.assert_allclose(state.weights[n], s_whole.weights[n], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(state.acc[n], s_whole.acc[n], rtol=2e-5, atol=2e-6)


@pytest.mark.slow  # default-run budget (44 s); test_ttt_fused checks groups of several sizes against autodiff
def test_remat_groups_same_values_and_grads():
    args = random_inputs("ttt_mlp", B=1, T=3 * 16 + 3, seed=5)
    loss = lambda g: lambda q, w: ttt_mlp(q, *args[1:5], w, *args[6:], remat_group=g)[0].sum()
    ref = jax.value_and_grad(loss(0), argnums=(0, 1))(args[0], args[5])
    for group in (1, 2):  # 2: one group of 2 and a remainder group of 1
        out = jax.value_and_grad(loss(group), argnums=(0, 1))(args[0], args[5])
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def _residual_bytes(group, n_minibatches=32):
    args = random_inputs("ttt_linear", B=1, H=2, T=16 * n_minibatches, F=16, seed=6)
    f = lambda q: ttt_linear(q, *args[1:], remat_group=group)[0]
    _, vjp_fn = jax.vjp(f, args[0])
    return sum(x.nbytes for x in jax.tree.leaves(vjp_fn))


def test_remat_groups_shrink_backward_memory():
    """Saved residuals for the backward pass shrink with the group size (T/(gK) states)."""
    none, g1, g4 = _residual_bytes(0), _residual_bytes(1), _residual_bytes(4)
    state_bytes = 2 * (16 * 16 + 16) * 4  # one [H, F, F] + [H, 1, F] state, float32
    assert g4 < g1 < none
    # group 4 keeps 32/4 = 8 carries plus the inputs; group 1 keeps 32 carries
    assert g1 - g4 >= 0.9 * (32 - 8) * state_bytes


# default-run budget: the stats code is learner-generic; TTT-MLP's case runs with the slow set (make test-all)
@pytest.mark.parametrize("kind", ["ttt_linear", pytest.param("ttt_mlp", marks=pytest.mark.slow)])
def test_stats_match_direct_computation(kind):
    K, T = 16, 40
    args = random_inputs(kind, T=T, seed=7)
    q, k, v, lr, ts, w, ln_s, ln_b = args
    learner = LEARNERS[kind]
    z, state, stats = ttt(kind, *args, impl="xla", return_stats=True)
    assert set(stats) == {"loss_before", "loss_after", "last_token_loss_before", "last_token_loss_after",
                          "delta_norm"}
    assert stats["loss_before"].shape == (2, 3, 3)  # mini-batches of 16, 16 and a short 8
    # weights at every segment boundary, from the reference run on prefixes
    starts = [0, 16, 32]
    for i, (a, b) in enumerate(zip(starts, [16, 32, 40])):
        _, s0 = ttt(kind, *_slice(args, 0, a), impl="reference") if a else (None, None)
        _, s1 = ttt(kind, *_slice(args, 0, b), impl="reference")
        w0 = s0.weights if s0 else {n: jnp.broadcast_to(x, (2, *x.shape)) for n, x in w.items()}
        w1 = s1.current_weights(ts)
        per_head = jax.vmap(jax.vmap(learner.loss, in_axes=(0, 0, 0, 0, 0, None)), in_axes=(0, 0, 0, None, None, None))
        before = per_head(w0, k[:, :, a:b], v[:, :, a:b], ln_s, ln_b, 1e-6)
        after = per_head(w1, k[:, :, a:b], v[:, :, a:b], ln_s, ln_b, 1e-6)
        np.testing.assert_allclose(stats["loss_before"][..., i], before.mean(-1), rtol=1e-4)
        np.testing.assert_allclose(stats["loss_after"][..., i], after.mean(-1), rtol=1e-4)
        np.testing.assert_allclose(stats["last_token_loss_before"][..., i], before[..., -1], rtol=1e-4)
        np.testing.assert_allclose(stats["last_token_loss_after"][..., i], after[..., -1], rtol=1e-4)
        drift = jnp.sqrt(sum(((w1[n] - w0[n]) ** 2).sum((-1, -2)) for n in w))
        np.testing.assert_allclose(stats["delta_norm"][..., i], drift, rtol=1e-4)
    # the inner loop learns: the loss after an update is below the loss before it
    assert float((stats["loss_after"] < stats["loss_before"]).mean()) > 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_inputs_close_to_float32(kind):
    args = random_inputs(kind, T=40, seed=8)
    z32, s32 = ttt(kind, *args, impl="xla")
    bf = tuple(a.astype(jnp.bfloat16) for a in args[:4]) + args[4:]
    z16, s16 = ttt(kind, *bf, impl="xla")
    assert z16.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(s16.weights))
    assert bool(jnp.isfinite(z16.astype(jnp.float32)).all())
    rel = jnp.linalg.norm(z16.astype(jnp.float32) - z32) / jnp.linalg.norm(z32)
    assert float(rel) < 2e-2


def _expect_error(match, **overrides):
    args = dict(zip(["q", "k", "v", "lr", "token_scale", "weights", "ln_scale", "ln_bias"],
                    random_inputs("ttt_linear", T=20, seed=9)))
    kwargs = {k: overrides.pop(k) for k in list(overrides) if k in ("mini_batch_size", "state", "impl", "remat_group",
                                                                    "return_stats", "kernel_config")}
    args.update(overrides)
    with pytest.raises(ValueError, match=match):
        ttt_linear(*args.values(), **kwargs)


def test_bad_inputs_give_clear_errors():
    q, k, v, lr, ts, w, ln_s, ln_b = random_inputs("ttt_linear", T=20, seed=9)
    _expect_error(r"q has shape \(2, 3, 20\); expected rank 4", q=q[..., 0])
    _expect_error(r"k has shape .*expected \(2, 3, 20, 8\)", k=k[:, :, :10])
    _expect_error(r"q has T=0 tokens", q=q[:, :, :0], k=k[:, :, :0], v=v[:, :, :0], lr=lr[:, :, :0])
    _expect_error(r"weights\['w1'\] has shape \(3, 6, 6\); expected \(3, 8, 8\)", weights={"w1": w["w1"][:, :6, :6], "b1": w["b1"]})
    _expect_error(r"weights has keys \['b1', 'b2', 'w1', 'w2'\]; expected \['b1', 'w1'\]",
                  weights=random_inputs("ttt_mlp", T=20)[5])
    _expect_error(r"mini_batch_size=0; expected an int >= 1", mini_batch_size=0)
    _expect_error(r"token_scale has shape \(16,\); expected \(8,\)", mini_batch_size=8)
    _expect_error(r"lr has shape", lr=lr[:, :, :5])
    _expect_error(r"ln_scale has shape", ln_scale=ln_s[:, :4])
    _expect_error(r"impl='fast'; expected one of", impl="fast")
    from ttc_jax.kernels import TTTKernelConfig
    _expect_error(r"impl='pallas': the 'tpu' ttt_linear kernels compile only on", impl="pallas",
                  kernel_config=TTTKernelConfig(interpret=False))
    _expect_error(r"return_stats=True is not supported by the Pallas kernels", impl="pallas", return_stats=True)
    _expect_error(r"mini_batch_size=12: the TPU ttt_linear kernel takes a multiple of 8", impl="pallas",
                  mini_batch_size=12, token_scale=jnp.ones(12))
    _expect_error(r"remat_group=-1", remat_group=-1)
    _expect_error(r"q has dtype int32", q=q.astype(jnp.int32))
    _, state = ttt_linear(q, k, v, lr, ts, w, ln_s, ln_b)
    bad_state = TTTState(weights={n: a[:1] for n, a in state.weights.items()}, acc=state.acc, pos=state.pos)
    _expect_error(r"state.weights\['w1'\] has shape \(1, 3, 8, 8\); expected \(2, 3, 8, 8\)", state=bad_state)
    with pytest.raises(ValueError, match="kind='ttt_conv'"):
        ttt("ttt_conv", q, k, v, lr, ts, w, ln_s, ln_b)


def _scan_lengths(fn, *args):
    """Lengths of every lax.scan in the traced program (nested ones included)."""
    lengths = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                lengths.append(eqn.params["length"])
            for sub in jax_core.jaxprs_in_params(eqn.params):
                walk(sub)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return lengths


@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_under_jit(kind):
    """Inside jit, a fresh or statically positioned state scans mini-batches, not tokens."""
    args = random_inputs(kind, T=64, seed=10)
    fresh = lambda *a: ttt(kind, *a, impl="xla", remat_group=2)
    assert max(_scan_lengths(fresh, *args)) == 2  # 4 mini-batches in groups of 2

    def split_in_jit(*a):  # two calls inside one trace: the second continues statically
        _, state = ttt(kind, *_slice(a, 0, 20), impl="xla")
        return ttt(kind, *_slice(a, 20, 64), impl="xla", state=state, remat_group=0)
    assert max(_scan_lengths(split_in_jit, *args)) == 2  # (64 - 32) / 16 full mini-batches
    np.testing.assert_allclose(jax.jit(split_in_jit)(*args)[0], jax.jit(fresh)(*args)[0][:, :, 20:],
                               rtol=2e-5, atol=2e-5)
