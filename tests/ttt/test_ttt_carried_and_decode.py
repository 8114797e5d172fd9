"""Carried states at every offset (float64 oracle), the decode step's conditional commit under
jit / grad / vmap, gelu_tanh against JAX's, and argument types."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.ttt import LEARNERS, TTTState, gelu_tanh, ttt, ttt_linear
from ttc_jax.ttt.learners import gelu_tanh_grad
from ttc_jax.ttt.testing import random_inputs

KINDS = ["ttt_linear", "ttt_mlp"]
LINEAR_ONLY_BY_DEFAULT = ["ttt_linear", pytest.param("ttt_mlp", marks=pytest.mark.slow)]
K = 4  # mini-batch size of these tests: every offset 0..K-1 is visited (one compile each)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _slice(args, start, stop):
    q, k, v, lr, *rest = args
    return (q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], lr[:, :, start:stop], *rest)


def test_gelu_tanh_and_its_derivative_match_jax():
    with jax.enable_x64(True):
        x = jnp.linspace(-6.0, 6.0, 2001, dtype=jnp.float64)
        ref = jax.nn.gelu(x, approximate=True)
        np.testing.assert_allclose(gelu_tanh(x), ref, rtol=1e-14, atol=1e-15)
        dref = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=True)))(x)
        np.testing.assert_allclose(gelu_tanh_grad(x), dref, rtol=1e-13, atol=1e-14)


def _carried_state(kind, p, *, B, H, F, seed):
    """A random carried state at position p: per-example weights and a nonzero acc (zero when p == 0)."""
    rng = np.random.default_rng(seed)
    shapes = LEARNERS[kind].weight_shapes(H, F)
    w = {n: jnp.asarray(0.3 * rng.standard_normal((B, *s))) for n, s in shapes.items()}
    acc = {n: jnp.asarray((p > 0) * 0.05 * rng.standard_normal((B, *s))) for n, s in shapes.items()}
    return w, acc


@pytest.mark.parametrize("kind", LINEAR_ONLY_BY_DEFAULT)
def test_carried_state_at_every_offset_float64(kind):
    """From a carried state at each offset p, the static dual path (head, full mini-batches, tail) and
    the traced token-by-token path both equal the primal definition; T = 2K + 3 crosses every part."""
    T, B, H, F = 2 * K + 3, 2, 2, 6
    with jax.enable_x64(True):
        q, k, v, lr, ts, w0, lns, lnb = random_inputs(kind, B=B, H=H, T=T, F=F, K=K, dtype=jnp.float64, seed=11)

        def run(impl, pos_of):
            return lambda q, k, v, lr, w, acc, p: ttt(kind, q, k, v, lr, ts, w0, lns, lnb, mini_batch_size=K,
                                                      impl=impl, state=TTTState(w, acc, pos_of(p)))
        ref = jax.jit(run("reference", jnp.asarray))
        traced = jax.jit(run("xla", jnp.asarray))
        static = jax.jit(run("xla", int), static_argnums=6)
        for p in range(K):
            w, acc = _carried_state(kind, p, B=B, H=H, F=F, seed=p)
            z_ref, s_ref = ref(q, k, v, lr, w, acc, p)
            for z, st in (static(q, k, v, lr, w, acc, p), traced(q, k, v, lr, w, acc, p)):
                assert rel_err(z, z_ref) < 1e-10, p
                assert int(st.pos) == int(s_ref.pos) == (p + T) % K
                for n in s_ref.weights:
                    assert rel_err(st.weights[n], s_ref.weights[n]) < 1e-10, (p, n)
                    np.testing.assert_allclose(st.acc[n], s_ref.acc[n], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_through_a_carried_state_float64(kind):
    """d/d(inputs, row factors, LN scale, carried weights and acc) of a continuation equals the
    primal's, on the static and the traced path (offsets 1 and K-1; at 0 acc is zero by contract)."""
    T, B, H, F = K + 3, 1, 2, 6
    with jax.enable_x64(True):
        q, k, v, lr, ts, w0, lns, lnb = random_inputs(kind, B=B, H=H, T=T, F=F, K=K, dtype=jnp.float64, seed=12)
        z_proj = jnp.asarray(np.random.default_rng(13).standard_normal(q.shape))

        def objective(impl, pos_of):
            def f(q, k, v, lr, ts, lns, w, acc, p):
                z, st = ttt(kind, q, k, v, lr, ts, w0, lns, lnb, mini_batch_size=K, impl=impl,
                            state=TTTState(w, acc, pos_of(p)), remat_group=1)
                return (z * z_proj).sum() + sum((st.weights[n] ** 2).sum() + (st.acc[n] * st.weights[n]).sum()
                                                for n in w)
            return f

        grad = lambda impl, pos_of, **kw: jax.jit(jax.grad(objective(impl, pos_of), argnums=tuple(range(8))), **kw)
        ref, traced = grad("reference", jnp.asarray), grad("xla", jnp.asarray)
        static = grad("xla", int, static_argnums=8)
        for p in (1, K - 1):
            w, acc = _carried_state(kind, p, B=B, H=H, F=F, seed=20 + p)
            a = (q, k, v, lr, ts, lns, w, acc, p)
            g_ref = ref(*a)
            for g in (static(*a), traced(*a)):
                for gi, gr in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
                    assert np.abs(np.asarray(gr)).max() > 0
                    assert rel_err(gi, gr) < 1e-10, p


@pytest.mark.parametrize("kind", LINEAR_ONLY_BY_DEFAULT)
def test_vmap_over_samples_with_different_positions(kind):
    """Decode steps vmapped over a leading sample axis whose positions differ per sample (the
    conditional commit becomes a select there) equal each sample stepped alone."""
    S, steps = 3, 6
    args = random_inputs(kind, B=2, H=2, T=2 * K + steps, F=8, K=K, seed=14)
    prefixes = (K - 3, K - 1, 2 * K)  # different offsets: some samples commit during the steps, some not
    states = [ttt(kind, *_slice(args, 0, n), mini_batch_size=K, impl="xla")[1] for n in prefixes]
    states = [TTTState(s.weights, s.acc, jnp.asarray(s.pos, jnp.int32)) for s in states]

    def step(q, k, v, lr, state):
        return ttt(kind, q, k, v, lr, *args[4:], mini_batch_size=K, state=state, impl="xla")

    inputs = [[_slice(args, n + t, n + t + 1)[:4] for t in range(steps)] for n in prefixes]
    alone = []
    for s, state in enumerate(states):
        zs = []
        for t in range(steps):
            z, state = jax.jit(step)(*inputs[s][t], state)
            zs.append(z)
        alone.append((jnp.concatenate(zs, 2), state))

    batched_step = jax.jit(jax.vmap(step))
    state = jax.tree.map(lambda *a: jnp.stack(a), *states)
    zs = []
    for t in range(steps):
        z, state = batched_step(*(jnp.stack([inputs[s][t][i] for s in range(S)]) for i in range(4)), state)
        zs.append(z)
    z = jnp.concatenate(zs, 3)
    for s in range(S):
        np.testing.assert_allclose(z[s], alone[s][0], rtol=1e-5, atol=1e-6)
        assert int(state.pos[s]) == int(alone[s][1].pos) == (prefixes[s] + steps) % K
        for n in state.weights:
            np.testing.assert_allclose(state.weights[n][s], alone[s][1].weights[n], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state.acc[n][s], alone[s][1].acc[n], rtol=1e-5, atol=1e-6)


def _cond_count(jaxpr):
    from jax.extend import core as jax_core
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "cond"
        for sub in jax_core.jaxprs_in_params(eqn.params):
            n += _cond_count(sub)
    return n


def test_decode_commits_in_a_conditional():
    """The traced-position step commits under lax.cond (a shared position stays a cond under vmap)."""
    args = random_inputs("ttt_linear", B=1, H=2, T=1, F=8, K=K, seed=15)
    _, state = ttt_linear(*args, mini_batch_size=K)
    step = lambda q, p: ttt_linear(q, *args[1:], mini_batch_size=K, state=TTTState(state.weights, state.acc, p))[0]
    assert _cond_count(jax.make_jaxpr(step)(args[0], jnp.int32(1)).jaxpr) == 1
    shared = jax.vmap(step, in_axes=(0, None))
    assert _cond_count(jax.make_jaxpr(shared)(args[0][None], jnp.int32(1)).jaxpr) == 1


def test_numpy_ints_and_lists_accepted():
    args = random_inputs("ttt_linear", T=20, K=16, seed=16)
    z, state = ttt_linear(*args, mini_batch_size=16, remat_group=2)
    z_np, state_np = ttt_linear(*args, mini_batch_size=np.int64(16), remat_group=np.int32(2))
    np.testing.assert_array_equal(z_np, z)
    as_lists = [np.asarray(a).tolist() for a in args[:5]]
    z_list, _ = ttt_linear(*as_lists, {n: np.asarray(w).tolist() for n, w in args[5].items()},
                           np.asarray(args[6]).tolist(), np.asarray(args[7]).tolist())
    np.testing.assert_allclose(z_list, z, rtol=1e-6, atol=1e-6)
    for bad in (16.0, "16", True):
        with pytest.raises(ValueError, match=rf"mini_batch_size={bad!r}; expected an int >= 1"):
            ttt_linear(*args, mini_batch_size=bad)


def test_carried_state_position_must_fit_mini_batch_size():
    args = random_inputs("ttt_linear", T=12, K=16, seed=17)
    _, state = ttt_linear(*args, mini_batch_size=16)  # position 12 of a mini-batch of 16
    small = random_inputs("ttt_linear", T=3, K=8, seed=17)
    with pytest.raises(ValueError, match=r"state.pos=12 does not fit mini_batch_size=8"):
        ttt_linear(*small, mini_batch_size=8, state=state)
