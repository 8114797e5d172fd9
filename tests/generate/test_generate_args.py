"""generate's max_new_tokens: an int >= 1 (NumPy integers too), never silently truncated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.generate import generate
from ttc_jax.nn import HybridLM, get_config


def test_max_new_tokens_must_be_an_int():
    model = HybridLM(get_config("tiny-ttt-linear", n_layers=1), rngs=nnx.Rngs(0))
    prompt = jnp.ones((1, 3), jnp.int32)
    for bad in (2.5, "4", 0, True):
        with pytest.raises(ValueError, match=rf"max_new_tokens={bad!r}; expected an int >= 1"):
            generate(model, prompt, bad, rng=jax.random.key(0))
    assert generate(model, prompt, np.int64(2), rng=jax.random.key(0), temperature=0.0).shape == (1, 2)
