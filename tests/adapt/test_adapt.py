"""ttt_adapt: zero steps, one SGD step against jax.grad, scopes leave the rest bit-identical, the NaN
guard, vmapped copies equal a loop, sampling from copies equals a loop of `sample`, carry-over. Tiny shapes; every distinct compilation is counted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adapt_oracles import flat_params, layer_of, mean_next_token_loss
from ttc_jax.adapt import copy_keys, sample_adapted, ttt_adapt, ttt_adapt_many
from ttc_jax.generate import sample


def _changed(before: dict, after: dict) -> dict:
    """{path: boolean row mask (leading axis) of rows that differ in any bit}."""
    out = {}
    for p, a in before.items():
        b = after[p]
        assert a.shape == b.shape and a.dtype == b.dtype, p
        diff = a.view(np.uint32) != b.view(np.uint32)
        out[p] = diff.reshape(diff.shape[0], -1).any(1) if diff.ndim else diff[None]
    return out


def test_zero_steps_returns_the_original_outputs_exactly(tiny, prefix, forward):
    r = ttt_adapt(tiny, prefix, steps=0, lr=0.1)
    np.testing.assert_array_equal(np.asarray(forward(r.model, prefix)), np.asarray(forward(tiny, prefix)))
    assert int(r.steps_done) == 0 and not bool(r.rolled_back) and r.losses.shape == (1,)
    np.testing.assert_allclose(float(r.losses[0]), float(mean_next_token_loss(tiny, prefix)), rtol=1e-6)


def test_one_step_equals_a_hand_computed_sgd_step(tiny, prefix):
    lr = 0.05
    before = flat_params(tiny)
    r = ttt_adapt(tiny, prefix, steps=1, lr=lr)
    graphdef, params, rest = nnx.split(tiny, nnx.Param, ...)
    grads = jax.grad(lambda p: mean_next_token_loss(nnx.merge(graphdef, p, rest), prefix))(params)
    want = flat_params(jax.tree.map(lambda p, g: p - lr * g, params, grads))
    got = flat_params(r.params)
    assert set(got) == set(want)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-7, err_msg=str(p))
    assert int(r.steps_done) == 1 and r.losses.shape == (2,) and float(r.losses[1]) < float(r.losses[0])
    drift = np.sqrt(sum(((got[p] - before[p]) ** 2).sum() for p in got))
    np.testing.assert_allclose(float(r.final_drift), drift, rtol=1e-4)
    np.testing.assert_allclose(float(r.drift[1]), drift, rtol=1e-4)
    assert float(r.drift[0]) == 0.0
    # the original model is untouched
    for p, a in flat_params(tiny).items():
        np.testing.assert_array_equal(a, before[p])


def test_diverging_update_rolls_back_and_reports(tiny, prefix, forward):
    before = flat_params(tiny)
    r = ttt_adapt(tiny, prefix, steps=1, lr=1e30)
    assert bool(r.rolled_back) and int(r.rollback_step) == 1 and int(r.steps_done) == 0
    assert not np.isfinite(float(r.losses[1]))  # the loss of the discarded weights that triggered it
    np.testing.assert_array_equal(np.asarray(forward(r.model, prefix)), np.asarray(forward(tiny, prefix)))
    for p, a in flat_params(tiny).items():
        np.testing.assert_array_equal(a, before[p])
        np.testing.assert_array_equal(flat_params(r.params)[p], a)


def _check_scope(model, result, in_scope):
    """Only rows where in_scope(path, layer) holds may change; some of them must."""
    before, after = flat_params(model), flat_params(result.params)
    n_groups, moved = model.n_groups, 0
    for p, rows in _changed(before, after).items():
        layers = layer_of(p, model.cfg, n_groups)
        stacked = p[0] == "layers" and n_groups
        layers = layers if stacked else [None if layers is None else layers[0]] * len(rows)
        allowed = np.array([in_scope(p, layer) for layer in layers])
        assert not (rows & ~allowed).any(), f"{p} changed outside the scope (rows {np.flatnonzero(rows & ~allowed)})"
        moved += int(rows.sum())
    assert moved > 0


STEPS3, LRS3 = np.array([1, 0, 1]), np.array([0.05, 0.1, 0.02], np.float32)


@pytest.fixture(scope="module")
def many3(tiny, prefix):
    """Three copies with per-copy step counts (masked) and learning rates."""
    return ttt_adapt_many(tiny, prefix, n=3, steps=STEPS3, lr=LRS3, key=jax.random.key(0))


def test_vmapped_copies_equal_a_loop(tiny, prefix, many3):
    """The single calls reuse the steps=1 compilation."""
    steps, lrs, many = STEPS3, LRS3, many3
    assert many.losses.shape == (3, 2) and many.n_copies == 3
    for i in range(3):
        one = ttt_adapt(tiny, prefix, steps=int(steps[i]), lr=float(lrs[i]))
        a, b = flat_params(one.params), flat_params(jax.tree.map(lambda x: x[i], many.params))
        for p in a:
            np.testing.assert_allclose(b[p], a[p], rtol=1e-5, atol=1e-7, err_msg=str(p))
        np.testing.assert_allclose(np.asarray(many.losses[i, :steps[i] + 1]), np.asarray(one.losses), rtol=1e-6)
        assert int(many.steps_done[i]) == steps[i]
    assert np.isnan(float(many.losses[1, 1]))  # copy 1 ran no step
    assert not np.allclose(flat_params(many.params)[("embed", "embedding")][0],
                           flat_params(many.params)[("embed", "embedding")][2])


def test_vmapped_copies_sample_like_a_loop_of_sample(many3):
    # ragged prompts: the held tails of the prefill run inside the vmap too
    prompts = [[3, 7, 11, 2, 9], [5, 1, 4]]
    rng = jax.random.key(11)
    s = sample_adapted(many3, prompts, n_per_copy=2, max_new_tokens=6, rng=rng, temperature=1.0,
                       stop_tokens=(0,))
    assert s.tokens.shape == (2, 6, 6)
    for i, k in enumerate(copy_keys(rng, 3)):
        ref = sample(many3.copy(i), prompts, n=2, max_new_tokens=6, rng=k, stop_tokens=(0,), mesh=None)
        for name in ("tokens", "lengths", "finished"):
            np.testing.assert_array_equal(np.asarray(getattr(s, name))[:, 2 * i:2 * i + 2],
                                          np.asarray(getattr(ref, name)), err_msg=f"copy {i} {name}")
        np.testing.assert_allclose(np.asarray(s.logprobs)[:, 2 * i:2 * i + 2], np.asarray(ref.logprobs),
                                   atol=1e-5, err_msg=f"copy {i}")
    # the copies' samples differ (adapted weights and keys both differ)
    assert len({np.asarray(s.tokens)[0, j].tobytes() for j in range(6)}) > 1


def test_sample_adapted_bad_input(tiny, many3):
    rng = jax.random.key(2)
    with pytest.raises(ValueError, match="result is a HybridLM"):
        sample_adapted(tiny, [[1, 2]], max_new_tokens=2, rng=rng)
    with pytest.raises(ValueError, match="n_per_copy=0"):
        sample_adapted(many3, [[1, 2]], max_new_tokens=2, rng=rng, n_per_copy=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample_adapted(many3, [[1, 99]], max_new_tokens=2, rng=rng)


@pytest.mark.slow
def test_sample_adapted_one_copy_result(hybrid, prefix):
    one = ttt_adapt(hybrid, prefix, steps=1, lr=0.3)
    rng = jax.random.key(2)
    s = sample_adapted(one, [[1, 2, 3, 4]], max_new_tokens=3, rng=rng, temperature=0.0)
    ref = sample(one.model, [[1, 2, 3, 4]], n=1, max_new_tokens=3, rng=copy_keys(rng, 1)[0], temperature=0.0,
                 mesh=None)
    np.testing.assert_array_equal(np.asarray(s.tokens), np.asarray(ref.tokens))


@pytest.mark.slow
def test_last_k_on_stacked_layers_and_vmap_equals_a_loop(tiny, prefix):
    """last_k=1 adapts row 1 of the stacked [2, ...] block parameters only; copies with their own keys
    (random crops), step counts (masked) and learning rates equal single calls."""
    kw = dict(scope="last_k", last_k=1, window=6, order="random")
    key, steps, lrs = jax.random.key(3), np.array([3, 4, 3]), np.array([0.2, 0.1, 0.3], np.float32)
    many = ttt_adapt_many(tiny, prefix, n=3, steps=steps, lr=lrs, key=key, **kw)
    keys = copy_keys(key, 3)
    assert many.losses.shape == (3, 5)
    for i in range(3):
        one = ttt_adapt(tiny, prefix, steps=int(steps[i]), lr=float(lrs[i]), key=keys[i], **kw)
        _check_scope(tiny, one, lambda p, layer: layer is not None and layer >= 1)
        a, b = flat_params(one.params), flat_params(jax.tree.map(lambda x: x[i], many.params))
        for p in a:
            np.testing.assert_allclose(b[p], a[p], rtol=2e-5, atol=1e-6, err_msg=str(p))
        np.testing.assert_allclose(np.asarray(many.losses[i, :steps[i] + 1]), np.asarray(one.losses), rtol=1e-5)
        assert np.isnan(np.asarray(many.losses[i, steps[i] + 1:])).all()
        assert int(many.steps_done[i]) == int(one.steps_done) == steps[i]
        np.testing.assert_allclose(np.asarray(many.copy(i)(prefix)), np.asarray(one.model(prefix)), rtol=1e-4,
                                   atol=1e-5)
    # different keys gave different data orders, hence different copies
    assert not np.allclose(np.asarray(many.losses[0, 1:4]), np.asarray(many.losses[2, 1:4]))


SCOPES = {
    "all": lambda p, layer: True,
    "norms": lambda p, layer: any("norm" in c for c in p),
    "ttt_w0": lambda p, layer: "fast_weights" in p,
    "lora": lambda p, layer: p[-1] == "kernel" and p[-2] in ("wq", "wk", "wv", "wo", "wg", "w1", "w2", "w3"),
    "last_k": lambda p, layer: layer is not None and layer >= 3,
}


@pytest.mark.slow
@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_each_scope_leaves_every_other_parameter_bit_identical(hybrid, prefix, scope):
    r = ttt_adapt(hybrid, prefix, steps=2, lr=0.5, scope=scope, last_k=2, optimizer="adam", lora_rank=2)
    assert int(r.steps_done) == 2 and not bool(r.rolled_back)
    _check_scope(hybrid, r, SCOPES[scope])
    if scope == "lora":  # every adapter moved its kernel (B leaves zero after the first step)
        changed = _changed(flat_params(hybrid), flat_params(r.params))
        assert all(changed[p].all() for p in changed if SCOPES["lora"](p, None))


@pytest.mark.slow
def test_injected_inf_rolls_back_to_the_last_good_weights(tiny, prefix):
    """A transform whose second update is inf: weights after one step come back, rollback_step 2."""
    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(grads, count, params=None):
        count = count + 1
        return jax.tree.map(lambda g: jnp.where(count == 2, jnp.inf, 1.0) * g, grads), count

    r = ttt_adapt(tiny, prefix, steps=3, lr=0.3, optimizer=optax.GradientTransformation(init, update))
    assert bool(r.rolled_back) and int(r.rollback_step) == 2 and int(r.steps_done) == 1
    one = ttt_adapt(tiny, prefix, steps=1, lr=0.3)
    a, b = flat_params(one.params), flat_params(r.params)
    for p in a:
        np.testing.assert_allclose(b[p], a[p], rtol=1e-6, atol=1e-8)
    assert np.isfinite(np.asarray(r.losses)).all()  # the bad update was caught before it was evaluated


@pytest.mark.slow
def test_carry_over_equals_one_longer_call(tiny, prefix):
    two = ttt_adapt(tiny, prefix, steps=2, lr=0.05, optimizer="adam")
    first = ttt_adapt(tiny, prefix, steps=1, lr=0.05, optimizer="adam")
    second = ttt_adapt(tiny, prefix, steps=1, lr=0.05, optimizer="adam", state=first.state)
    a, b = flat_params(two.params), flat_params(second.params)
    for p in a:
        np.testing.assert_allclose(b[p], a[p], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(second.losses[0]), float(two.losses[1]), rtol=1e-6)
    np.testing.assert_allclose(float(second.final_drift), float(two.final_drift), rtol=1e-5)
    reset = ttt_adapt(tiny, prefix, steps=1, lr=0.05, optimizer="adam")
    np.testing.assert_allclose(float(reset.losses[1]), float(first.losses[1]), rtol=1e-6)


def test_bad_inputs_raise_one_line_value_errors(tiny, prefix):
    cases = [
        (dict(steps=-1), r"steps=-1; expected an int >= 0"),
        (dict(steps=1.5), r"steps=1.5"),
        (dict(lr=0.0), r"lr=0.0; expected a finite float > 0"),
        (dict(lr=-1e-3), r"lr=-0.001"),
        (dict(lr=float("nan")), r"lr=nan"),
        (dict(scope="bias"), r"scope='bias'; expected one of"),
        (dict(prefix=prefix[:, :1]), r"prefix has 1 token\(s\); expected at least 2"),
        (dict(prefix=prefix.at[0, 3].set(48)), r"prefix contains token id 48; expected ids in \[0, 48\)"),
        (dict(prefix=prefix.at[1, 0].set(-2)), r"prefix contains token id -2"),
        (dict(prefix=prefix.astype(jnp.float32)), r"prefix has shape \(2, 13\) and dtype float32"),
        (dict(optimizer="lbfgs"), r"optimizer='lbfgs'; expected one of"),
        (dict(scope="last_k", last_k=3), r"last_k=3; expected an int in \[1, 2\]"),
        (dict(scope="lora", lora_rank=0), r"lora_rank=0"),
        (dict(window=13), r"window=13; expected an int in \[1, 12\]"),
        (dict(order="shuffled"), r"order='shuffled'"),
        (dict(mask=np.ones((2, 12))), r"mask has shape \(2, 12\)"),
        (dict(state={"w": 1}), r"state is a dict; expected None"),
    ]
    for kwargs, match in cases:
        args = {**dict(prefix=prefix, steps=1, lr=0.1), **kwargs}
        with pytest.raises(ValueError, match=match) as err:
            ttt_adapt(tiny, args.pop("prefix"), **args)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"steps=\[1, -1\]"):
        ttt_adapt_many(tiny, prefix, n=2, steps=[1, -1], lr=0.1)
    with pytest.raises(ValueError, match=r"model is a Linear; expected a ttc_jax.nn.HybridLM"):
        ttt_adapt(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), prefix, steps=1, lr=0.1)
    with pytest.raises(ValueError, match=r"n=0; expected an int >= 1"):
        ttt_adapt_many(tiny, prefix, n=0, steps=1, lr=0.1)
    with pytest.raises(ValueError, match=r"lr=\[0.1, 0.0\]"):
        ttt_adapt_many(tiny, prefix, n=2, steps=1, lr=[0.1, 0.0])
