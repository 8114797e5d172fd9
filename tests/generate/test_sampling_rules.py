"""Sampling rules on random logits: top-k, top-p, min-p, greedy, per-row keys, bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.generate import filter_logits, sample_token, sampling_params
from ttc_jax.generate.sampling import sample_rows

B, V = 256, 40


@pytest.fixture(scope="module")
def logits():
    return jnp.asarray(np.random.default_rng(0).normal(0, 2.0, (B, V)), jnp.float32)


def _draws(logits, params, seed=0, repeats=4):
    keys = jax.random.split(jax.random.key(seed), repeats * B).reshape(repeats, B)
    return np.stack([np.asarray(sample_rows(logits, k, params)) for k in keys])


def test_top_k_never_emits_outside_the_top_k(logits):
    params = sampling_params(V, temperature=1.5, top_k=5)
    top = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    draws = _draws(logits, params)
    assert all(np.isin(draws[:, b], top[b]).all() for b in range(B))
    assert len(np.unique(draws)) > 5  # rows differ, so it is not one fixed set


def test_top_p_keeps_the_smallest_set_reaching_p(logits):
    p = 0.7
    kept = np.isfinite(np.asarray(filter_logits(logits, sampling_params(V, temperature=1.0, top_p=p))))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    for b in range(B):
        mass = probs[b, kept[b]].sum()
        assert mass >= p - 1e-6  # reaches p
        assert mass - probs[b, kept[b]].min() < p  # dropping its least likely token falls below p
        assert probs[b, kept[b]].min() >= probs[b, ~kept[b]].max(initial=0)  # the most likely tokens
    draws = _draws(logits, sampling_params(V, top_p=p))
    assert all(kept[b, draws[:, b]].all() for b in range(B))
    # top_p = 1 keeps everything
    assert np.isfinite(np.asarray(filter_logits(logits, sampling_params(V, top_p=1.0)))).all()


def test_min_p_keeps_tokens_within_a_factor_of_the_best(logits):
    kept = np.isfinite(np.asarray(filter_logits(logits, sampling_params(V, temperature=0.8, min_p=0.1))))
    probs = np.asarray(jax.nn.softmax(logits / 0.8, axis=-1))
    np.testing.assert_array_equal(kept, probs >= 0.1 * probs.max(-1, keepdims=True))
    draws = _draws(logits, sampling_params(V, temperature=0.8, min_p=0.1))
    assert all(kept[b, draws[:, b]].all() for b in range(B))


def test_rules_compose_and_frequencies_follow_the_tempered_distribution():
    row = jnp.log(jnp.array([0.05, 0.1, 0.15, 0.3, 0.4]))
    logits = jnp.tile(row, (4000, 1))
    keys = jax.random.split(jax.random.key(3), 4000)
    # top-k 4 drops token 0, then top-p 0.6 keeps {4, 3} of the renormalised 4 tokens (0.42 + 0.32 >= 0.6)
    draws = np.asarray(sample_rows(logits, keys, sampling_params(5, top_k=4, top_p=0.6)))
    freq = np.bincount(draws, minlength=5) / 4000
    np.testing.assert_allclose(freq, [0, 0, 0, 0.3 / 0.7, 0.4 / 0.7], atol=0.03)
    draws = np.asarray(sample_rows(logits, keys, sampling_params(5, temperature=0.5)))
    expected = np.asarray(jax.nn.softmax(row / 0.5))
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 4000, expected, atol=0.03)


def test_temperature_zero_is_argmax(logits):
    keys = jax.random.split(jax.random.key(0), B)
    greedy = np.asarray(sample_rows(logits, keys, sampling_params(V, temperature=0, top_p=0.5)))
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), -1))


def test_a_rows_draw_depends_only_on_its_key(logits):
    keys = jax.random.split(jax.random.key(5), B)
    params = sampling_params(V)
    full = np.asarray(sample_rows(logits, keys, params))
    part = np.asarray(sample_rows(logits[7:9], keys[7:9], params))
    np.testing.assert_array_equal(full[7:9], part)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), "temperature=-0.5"),
    (dict(temperature="1"), "temperature='1'"),
    (dict(top_k=0), "top_k=0"),
    (dict(top_k=V + 1), f"top_k={V + 1}"),
    (dict(top_p=0.0), r"top_p=0.0; expected None or a number in \(0, 1\]"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(min_p=-0.1), "min_p=-0.1"),
    (dict(min_p=2), "min_p=2"),
])
def test_bad_sampling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampling_params(V, **kwargs)
    with pytest.raises(ValueError, match=match):
        sample_token(jnp.zeros((1, V)), jax.random.key(0), **kwargs)
