"""HybridLM with ttt_impl="pallas" (the fused kernels, interpret mode on CPU) against ttt_impl="xla"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn import HybridLM, get_config


@pytest.mark.slow
def test_hybrid_model_with_kernels_equals_xla_forward_gradients_and_decode():
    cfg = get_config("tiny-hybrid", n_layers=4)  # TTT-Linear, TTT-MLP, TTT-Linear, attention; F = 16, K = 8
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 21)), jnp.int32)
    models = {impl: HybridLM(cfg.replace(ttt_impl=impl), rngs=nnx.Rngs(1)) for impl in ("xla", "pallas")}

    def loss(m):
        return jax.nn.log_softmax(m(tokens)).mean()

    out = {impl: nnx.value_and_grad(loss)(m) for impl, m in models.items()}
    np.testing.assert_allclose(out["pallas"][0], out["xla"][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["pallas"][1]), jax.tree.leaves(out["xla"][1])):
        assert float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30)) < 1e-4

    model = models["pallas"]
    full = model(tokens)
    logits, cache = model(tokens[:, :11], cache=model.init_cache(2, 24))
    outs = [logits]
    step = nnx.jit(lambda m, t, c: m(t, cache=c))  # traced position: the decode kernel
    for t in range(11, tokens.shape[1]):
        logits, cache = step(model, tokens[:, t:t + 1], cache)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-4, atol=1e-5)
