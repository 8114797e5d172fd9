"""Generation loop against repeated full passes; sampling rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.generate import generate, sample_token
from ttc_jax.nn import HybridLM, get_config


@pytest.mark.slow  # default-run budget: about 40 s; `make test-all` runs it
def test_greedy_generation_equals_argmax_of_full_passes():
    cfg = get_config("tiny-hybrid")
    model = HybridLM(cfg, rngs=nnx.Rngs(0))
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 13)), jnp.int32)
    out = generate(model, prompt, 4, rng=jax.random.key(0), temperature=0.0)
    seq = prompt
    for _ in range(4):
        nxt = jnp.argmax(model(seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq[:, 13:])


def test_sampling_rules():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * 2000))
    draws = sample_token(logits, jax.random.key(1), temperature=1.0)
    freq = np.bincount(np.asarray(draws), minlength=4) / 2000
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.04)
    top2 = sample_token(logits, jax.random.key(2), temperature=1.0, top_k=2)
    assert set(np.unique(np.asarray(top2))) <= {2, 3}
    assert (np.asarray(sample_token(logits, jax.random.key(3), temperature=0.0)) == 3).all()
    with pytest.raises(ValueError, match="temperature=-1"):
        sample_token(logits, jax.random.key(0), temperature=-1)
    with pytest.raises(ValueError, match="top_k=5"):
        sample_token(logits, jax.random.key(0), top_k=5)


def test_generate_bad_input():
    model = HybridLM(get_config("tiny-ttt-linear", n_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(model, jnp.ones((1, 3), jnp.int32), 0, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="cache_size=4 is smaller"):
        generate(model, jnp.ones((1, 3), jnp.int32), 2, rng=jax.random.key(0), cache_size=4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, jnp.full((1, 3), 999, jnp.int32), 2, rng=jax.random.key(0))
