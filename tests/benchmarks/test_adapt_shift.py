"""benchmarks/adapt_shift.py measures what it says: the loss is on the continuation only, with the prefix in
context; zero adaptation steps give the no-adaptation loss exactly; adapting on the zero-weight padded
buffer one carried-over step at a time equals one ttt_adapt call on the bare prefix. Tiny random model."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from bench_loader import load
from flax import nnx

from ttc_jax.adapt import ttt_adapt
from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.model import HybridLM

CFG = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, ffn_dim=32, layer_pattern=("ttt_linear",),
                  backbone="transformer", mini_batch_size=4, max_seq_len=32, remat_group=0)
P_MAX, C = 12, 4


@pytest.fixture(scope="module")
def shift():
    return load("adapt_shift")


@pytest.fixture(scope="module")
def setup(shift):
    model = HybridLM(CFG, rngs=nnx.Rngs(3))
    params, rest, score = shift.make_scorer(model)
    window = np.asarray(jax.random.randint(jax.random.key(5), (P_MAX + C,), 0, CFG.vocab_size), np.int32)
    return model, params, rest, score, window


def test_loss_is_on_the_continuation_with_the_prefix_in_context(shift, setup):
    model, params, rest, score, window = setup
    P = 8
    got = shift.plain_losses(params, rest, score, window, [P], C)[P]
    seq = window[-(P + C):]  # P prefix tokens, then the C continuation tokens
    logits = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(seq[None, :-1]))[0]  # the model's own forward
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(seq[1:]))
    np.testing.assert_allclose(got, float(ce[P - 1:].mean()), rtol=1e-6)  # exactly the C continuation targets
    assert ce[P - 1:].shape == (C,)
    before = window.copy()
    before[:P_MAX - P] = (before[:P_MAX - P] + 1) % CFG.vocab_size  # tokens before the prefix: not read
    assert shift.plain_losses(params, rest, score, before, [P], C)[P] == got
    ctx = window.copy()
    ctx[P_MAX - P] = (ctx[P_MAX - P] + 1) % CFG.vocab_size  # the first prefix token is read (context)
    assert shift.plain_losses(params, rest, score, ctx, [P], C)[P] != got


def test_adapt_buffer_puts_the_prefix_first_with_weight_one(shift, setup):
    window = setup[-1]
    tokens, mask = shift.adapt_buffer(window, 5, C, P_MAX)
    np.testing.assert_array_equal(tokens[:5], window[P_MAX - 5:P_MAX])
    np.testing.assert_array_equal(mask, np.r_[np.ones(5), np.zeros(P_MAX - 5)])
    assert (tokens[5:] == 0).all()
    with pytest.raises(ValueError, match="prefix_len"):
        shift.adapt_buffer(window, P_MAX + 1, C, P_MAX)


@pytest.mark.slow  # a ttt_adapt compilation (tens of seconds on a shared CPU)
def test_zero_steps_is_the_no_adaptation_loss_exactly(shift, setup):
    model, params, rest, score, window = setup
    for P in (4, P_MAX):
        out, rollbacks = shift.adapted_losses(model, score, window, P, C, scope="all", lr=1e-2, steps=[0],
                                              buffer_len=P_MAX)
        assert out == {0: shift.plain_losses(params, rest, score, window, [P], C)[P]} and rollbacks == 0


@pytest.mark.slow  # three ttt_adapt compilations
def test_padded_carried_steps_equal_one_call_on_the_bare_prefix(shift, setup):
    model, params, rest, score, window = setup
    P = 8
    out, _ = shift.adapted_losses(model, score, window, P, C, scope="all", lr=1e-2, steps=[1, 2], buffer_len=P_MAX)
    r = ttt_adapt(model, window[P_MAX - P:P_MAX], steps=2, lr=1e-2, scope="all", optimizer="adam")
    direct = shift.continuation_loss(score(r.params, r.rest, jnp.asarray(window[-(P + C):])), P)
    np.testing.assert_allclose(out[2], direct, rtol=2e-5)
    none = shift.plain_losses(params, rest, score, window, [P], C)[P]
    assert abs(out[1] - none) > 1e-4 and abs(out[2] - out[1]) > 1e-4  # the steps do change the loss


def test_clustered_se_reduces_to_the_plain_standard_error(shift):
    v = np.array([0.3, -0.1, 0.5, 0.2, 0.0])
    mean, se = shift.clustered_mean_se(v, np.arange(5))
    np.testing.assert_allclose(mean, v.mean())
    np.testing.assert_allclose(se, v.std(ddof=1) / np.sqrt(5), rtol=1e-12)
    _, se_pairs = shift.clustered_mean_se(np.r_[v, v], np.r_[np.arange(5), np.arange(5)])  # duplicated windows
    np.testing.assert_allclose(se_pairs, se, rtol=1e-12)  # no extra information from copies in one cluster
