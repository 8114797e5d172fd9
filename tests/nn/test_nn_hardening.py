"""HybridLM: layer counts that are not a multiple of the pattern, remat_layers memory, dtype and
cache/batch errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn import HybridLM, get_config


def tokens_for(cfg, B=2, T=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)), jnp.int32)


def _scan_lengths(fn, *args):
    from jax.extend import core as jax_core
    out = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                out.append(eqn.params["length"])
            for sub in jax_core.jaxprs_in_params(eqn.params):
                walk(sub)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


@pytest.mark.slow  # four compiles of a small model (about 35 s of CPU)
def test_layers_beyond_the_last_full_period_run_after_the_scanned_groups():
    """n_layers = 5 with a period of 2: two scanned groups, then 1 unscanned layer; equal to the
    unscanned model with the same parameters, and decoding equals the full pass."""
    cfg = get_config("tiny-hybrid", n_layers=5, layer_pattern=("ttt_linear", "attention"), d_model=32, ffn_dim=32)
    scanned = HybridLM(cfg, rngs=nnx.Rngs(2))
    assert scanned.n_groups == 2 and len(scanned.layers_rest.blocks) == 1
    graphdef, state = nnx.split(scanned)
    assert 2 in _scan_lengths(lambda s, t: nnx.merge(graphdef, s)(t), state, tokens_for(cfg))  # the layer scan

    plain = HybridLM(cfg.replace(scan_layers=False), rngs=nnx.Rngs(3))
    stacked = nnx.state(scanned.layers, nnx.Param)
    for i, block in enumerate(plain.layers.blocks[:4]):
        nnx.update(block, jax.tree.map(lambda a: a[i // 2], stacked["blocks"][i % 2]))
    nnx.update(plain.layers.blocks[4], nnx.state(scanned.layers_rest.blocks[0], nnx.Param))
    nnx.update(plain.embed, nnx.state(scanned.embed))
    nnx.update(plain.ln_f, nnx.state(scanned.ln_f))
    tokens = tokens_for(cfg)
    full, stats = nnx.jit(lambda m, t: m(t, return_ttt_stats=True))(scanned, tokens)
    np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(plain, tokens), full, rtol=1e-5, atol=1e-6)
    assert sorted(stats) == [0, 2, 4]

    step = nnx.jit(lambda m, t, c: m(t, cache=c))
    logits, cache = step(scanned, tokens[:, :5], scanned.init_cache(2, 16))
    outs = [logits]
    for t in range(5, tokens.shape[1]):
        logits, cache = step(scanned, tokens[:, t:t + 1], cache)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-4, atol=1e-5)


def _backward_temp_bytes(cfg):
    """Temporary memory of the compiled training gradient (what the backward pass keeps alive)."""
    model = HybridLM(cfg, rngs=nnx.Rngs(4))
    graphdef, params = nnx.split(model)
    tokens = tokens_for(cfg, B=1, T=64)

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens[:, :-1])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1).mean()
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow  # two compiles of a model gradient
def test_remat_layers_shrinks_backward_memory():
    """remat_layers keeps only each group's input for the backward pass (the gradients themselves are
    compared in test_nn_model): the compiled gradient needs much less temporary memory."""
    cfg = get_config("tiny-ttt-linear-base", n_layers=4, d_model=64, ffn_dim=512)
    plain, remat = _backward_temp_bytes(cfg), _backward_temp_bytes(cfg.replace(remat_layers=True))
    assert remat < 0.6 * plain, (remat, plain)


def test_float64_without_x64_raises():
    cfg = get_config("tiny-ttt-linear", n_layers=1, dtype="float64")
    with pytest.raises(ValueError, match=r"ModelConfig.dtype='float64' needs 64-bit JAX"):
        HybridLM(cfg, rngs=nnx.Rngs(0))
    with jax.enable_x64(True):
        model = HybridLM(cfg, rngs=nnx.Rngs(0))
        assert model.layers.blocks[0].seq_modeling_block.dtype == jnp.float64


def test_empty_batch_and_bad_cache_give_clear_errors():
    cfg = get_config("tiny-ttt-linear", n_layers=1)
    model = HybridLM(cfg, rngs=nnx.Rngs(6))
    with pytest.raises(ValueError, match=r"tokens has shape \(0, 3\) with B=0 rows; expected a batch of B >= 1"):
        model(jnp.zeros((0, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"cache has keys \[\]; expected the dict from init_cache"):
        model(jnp.zeros((1, 3), jnp.int32), cache={})
    for bad in (0, 2.0, "2"):
        with pytest.raises(ValueError, match=rf"batch_size={bad!r}; expected an int >= 1"):
            model.init_cache(bad, 8)
    assert model.init_cache(np.int64(2), 8)["pos"] == 0


def test_config_accepts_numpy_ints():
    cfg = get_config("tiny-ttt-linear", mini_batch_size=np.int64(8), n_layers=np.int32(2))
    assert type(cfg.mini_batch_size) is int and cfg.mini_batch_size == 8 and cfg.n_layers == 2
    with pytest.raises(ValueError, match=r"mini_batch_size must be a positive int, got 8.0"):
        get_config("tiny-ttt-linear", mini_batch_size=8.0)
