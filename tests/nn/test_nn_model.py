"""HybridLM: preset sizes, decode == full pass, scanned == unscanned layers, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn import HybridLM, ModelConfig, get_config

# ttt-math.md §7: parameter counts (tied embeddings), Mamba backbone.
PUBLISHED_PARAMS = {
    "ttt-linear-125m": 110.4e6, "ttt-linear-350m": 337.7e6, "ttt-linear-760m": 733.6e6,
    "ttt-linear-1.3b": 1285.6e6, "ttt-mlp-125m": 114.6e6, "ttt-mlp-350m": 348.8e6,
    "ttt-mlp-760m": 758.5e6, "ttt-mlp-1.3b": 1307.9e6,
}


def n_params(cfg: ModelConfig) -> int:
    abstract = nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_counts(name):
    count = n_params(get_config(name))
    assert abs(count - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 5e-3


def tokens_for(cfg, B=2, T=19, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)), jnp.int32)


DECODE_CASES = {
    "ttt-linear-mamba": get_config("tiny-ttt-linear", n_layers=2),
    "ttt-linear-transformer": get_config("tiny-ttt-linear-base", n_layers=2),
    "ttt-mlp-mamba": get_config("tiny-ttt-mlp", n_layers=2),
    "ttt-mlp-transformer": get_config("tiny-ttt-mlp-base", n_layers=2),
    "attention": get_config("tiny-transformer", n_layers=2, sliding_window=6),
    "hybrid": get_config("tiny-hybrid"),
    "hybrid-unscanned": get_config("tiny-hybrid", scan_layers=False,
                                   layer_pattern=("ttt_mlp", "attention", "ttt_linear")),
}


# default-run budget: hybrid covers TTT-Linear, TTT-MLP (Mamba backbone) and attention together, so the
# unscanned hybrid, the TTT-MLP-only, TTT-Linear-Mamba and attention-only cases run with the slow set
# (make test-all); TTT-Linear on the Transformer backbone stays
SLOW_DECODE = ("hybrid-unscanned", "ttt-mlp-mamba", "ttt-mlp-transformer", "attention", "ttt-linear-mamba")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_DECODE else c
                                  for c in sorted(DECODE_CASES)])
def test_decode_token_by_token_equals_full_pass(case):
    """Prefill a prefix (K=8: mid mini-batch), an eager multi-token chunk, then one jitted step per token."""
    cfg = DECODE_CASES[case]
    model = HybridLM(cfg, rngs=nnx.Rngs(1))
    tokens = tokens_for(cfg)
    full = model(tokens)
    step = nnx.jit(lambda m, t, c: m(t, cache=c))
    for prefix in (5,) if case != "hybrid" else (1, 11):
        logits, cache = model(tokens[:, :prefix], cache=model.init_cache(2, 24))
        outs = [logits]
        logits, cache = model(tokens[:, prefix:prefix + 6], cache=cache)
        outs.append(logits)
        for t in range(prefix + 6, tokens.shape[1]):
            logits, cache = step(model, tokens[:, t:t + 1], cache)
            outs.append(logits)
        np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-4, atol=1e-5)
        assert int(cache["pos"]) == tokens.shape[1]


@pytest.mark.slow  # default-run budget (37 s); decode[hybrid] and every model test run the scanned layers
def test_scanned_layers_equal_unscanned():
    cfg = get_config("tiny-hybrid", n_layers=8)
    scanned = HybridLM(cfg, rngs=nnx.Rngs(2))
    plain = HybridLM(cfg.replace(scan_layers=False), rngs=nnx.Rngs(3))
    # copy the stacked parameters of group g, block j into layer g * 4 + j
    stacked = nnx.state(scanned.layers, nnx.Param)
    for i, block in enumerate(plain.layers.blocks):
        g, j = divmod(i, 4)
        nnx.update(block, jax.tree.map(lambda a: a[g], stacked["blocks"][j]))
    nnx.update(plain.embed, nnx.state(scanned.embed))
    nnx.update(plain.ln_f, nnx.state(scanned.ln_f))
    tokens = tokens_for(cfg, T=12)
    np.testing.assert_allclose(plain(tokens), scanned(tokens), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # default-run budget (81 s); training tests take gradients of the scanned model by default
def test_training_gradients_finite_and_remat_layers_identical():
    cfg = get_config("tiny-hybrid")
    tokens = tokens_for(cfg, T=20)

    def loss_and_grad(cfg):
        model = HybridLM(cfg, rngs=nnx.Rngs(4))

        def loss(model):
            logits = model(tokens[:, :-1])
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1).mean()
        return nnx.value_and_grad(loss)(model)

    (l0, g0), (l1, g1) = loss_and_grad(cfg), loss_and_grad(cfg.replace(remat_layers=True))
    assert np.isfinite(float(l0)) and abs(float(l0) - np.log(cfg.vocab_size)) < 0.5
    leaves0, leaves1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves0)
    assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves0) == len(leaves0)  # every parameter gets a gradient
    for a, b in zip(leaves0, leaves1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_bf16_model_close_to_float32():
    cfg = get_config("tiny-hybrid")
    m32 = HybridLM(cfg, rngs=nnx.Rngs(5))
    m16 = HybridLM(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(5))
    tokens = tokens_for(cfg, T=16)
    l32, l16 = m32(tokens), m16(tokens)
    assert bool(jnp.isfinite(l16).all())
    assert float(jnp.linalg.norm(l16 - l32) / jnp.linalg.norm(l32)) < 2e-2


def test_bad_model_inputs_give_clear_errors():
    cfg = get_config("tiny-ttt-linear", n_layers=1)
    model = HybridLM(cfg, rngs=nnx.Rngs(6))
    with pytest.raises(ValueError, match=r"tokens contains id 256 outside the vocabulary \[0, 256\)"):
        model(jnp.array([[1, 256]]))
    with pytest.raises(ValueError, match=r"tokens contains id -1"):
        model(jnp.array([[-1, 2]]))
    with pytest.raises(ValueError, match=r"tokens has shape \(3,\); expected \[B, T\]"):
        model(jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"tokens has dtype float32"):
        model(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"TTTLayer: x has shape \(1, 3, 32\); expected \[B, T, D=64\]"):
        model.layers.blocks[0].seq_modeling_block(jnp.ones((1, 3, 32)))
    with pytest.raises(ValueError, match=r"unknown preset name='ttt-linear-7b'"):
        get_config("ttt-linear-7b")
    with pytest.raises(ValueError, match=r"unknown layer kind 'mamba2'"):
        get_config("tiny-hybrid", layer_pattern=("ttt_linear", "mamba2"))
    with pytest.raises(ValueError, match=r"d_model=100 must be divisible by n_heads=3"):
        ModelConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match=r"mini_batch_size must be a positive int, got 0"):
        get_config("tiny-ttt-linear", mini_batch_size=0)


def _program_size(cfg):
    graphdef, state = nnx.split(HybridLM(cfg, rngs=nnx.Rngs(0)))
    fn = lambda state, tokens: nnx.merge(graphdef, state)(tokens)
    return len(str(jax.make_jaxpr(fn)(state, tokens_for(cfg, T=8))))


@pytest.mark.slow  # default-run budget (32 s): a compile-size property; `make test-all` runs it
def test_scan_over_layers_keeps_program_size_constant_in_depth():
    """With scan_layers the traced program does not grow with depth (so neither does compile time)."""
    shallow, deep = (get_config("tiny-hybrid", n_layers=n) for n in (4, 16))
    assert _program_size(deep) == _program_size(shallow)
    unscanned = _program_size(shallow.replace(scan_layers=False, n_layers=8))
    assert unscanned > 1.5 * _program_size(shallow.replace(scan_layers=False))


@pytest.mark.slow  # default-run budget: about 33 s; `make test-all` runs it
def test_inner_loss_stats_per_ttt_layer():
    """Stats come back for every TTT layer (not attention), scanned or not, and agree between the two."""
    cfg = get_config("tiny-hybrid")  # layers: ttt_linear, ttt_mlp, ttt_linear, attention; K=8
    model = HybridLM(cfg, rngs=nnx.Rngs(7))
    tokens = tokens_for(cfg, T=20)
    logits, stats = model(tokens, return_ttt_stats=True)
    np.testing.assert_allclose(logits, model(tokens), rtol=1e-5, atol=1e-6)
    assert sorted(stats) == [0, 1, 2]
    for st in stats.values():
        assert st["loss_before"].shape == (2, cfg.n_heads, 3)  # mini-batches of 8, 8 and 4
        assert bool(jnp.isfinite(st["loss_after"]).all())
    # the same layers through the unscanned path
    plain = HybridLM(cfg.replace(scan_layers=False), rngs=nnx.Rngs(8))
    stacked = nnx.state(model.layers, nnx.Param)
    for j, block in enumerate(plain.layers.blocks):
        nnx.update(block, jax.tree.map(lambda a: a[0], stacked["blocks"][j]))
    nnx.update(plain.embed, nnx.state(model.embed))
    _, plain_stats = plain(tokens, return_ttt_stats=True)
    for i in stats:
        np.testing.assert_allclose(plain_stats[i]["loss_before"], stats[i]["loss_before"], rtol=1e-5)
    _, cache, stats_with_cache = model(tokens, cache=model.init_cache(2, 24), return_ttt_stats=True)
    assert int(cache["pos"]) == 20 and sorted(stats_with_cache) == [0, 1, 2]


@pytest.mark.parametrize("name", [pytest.param("ttt-linear-125m", marks=pytest.mark.slow), "ttt-linear-base-125m",
                                  # the other four of the five published 125m presets: slow (20-26 s each)
                                  pytest.param("ttt-mlp-125m", marks=pytest.mark.slow),
                                  pytest.param("ttt-mlp-base-125m", marks=pytest.mark.slow),
                                  pytest.param("transformer-125m", marks=pytest.mark.slow)])
def test_published_125m_decode_equals_full_pass(name):
    """The published 125m configs run, and decoding after a prefix reproduces the full pass."""
    cfg = get_config(name, vocab_size=1024)  # the vocabulary only sizes the embedding
    model = HybridLM(cfg, rngs=nnx.Rngs(9))
    tokens = tokens_for(cfg, B=1, T=20)
    full = model(tokens)
    logits, cache = model(tokens[:, :17], cache=model.init_cache(1, 24))
    step = nnx.jit(lambda m, t, c: m(t, cache=c))
    outs = [logits]
    for t in range(17, 20):
        logits, cache = step(model, tokens[:, t:t + 1], cache)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=2e-4, atol=2e-5)
