"""ModelConfig flags the published configs can express: pre_conv, share_qk, use_gate set
independently, untied embeddings, the RMSNorm epsilon; parameter counts of ttc_jax.scaling agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import forward
from flax import nnx

from ttc_jax.nn import HybridLM, ModelConfig, get_config
from ttc_jax.scaling import flops

MIXED = {
    "pre_conv only": dict(backbone="transformer", pre_conv=True),
    "share_qk only": dict(backbone="transformer", share_qk=True),
    "gate only": dict(backbone="transformer", use_gate=True),
    "mamba without gate": dict(backbone="mamba", use_gate=False),
    "untied": dict(tie_word_embeddings=False),
}


def n_params(cfg: ModelConfig) -> int:
    abstract = nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("case", sorted(MIXED))
@pytest.mark.parametrize("preset", ["tiny-ttt-linear", "tiny-hybrid"])
def test_parameter_count_matches_scaling(preset, case):
    cfg = get_config(preset, **MIXED[case])
    assert flops.param_count(cfg).total == n_params(cfg)


def test_flags_resolve_from_backbone_and_build_the_named_parts():
    cfg = get_config("tiny-ttt-linear-base", n_layers=1, pre_conv=True, use_gate=True, scan_layers=False)
    assert (cfg.has_pre_conv, cfg.has_qk_conv, cfg.has_gate) == (True, False, True)
    model = nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0)))
    block = model.layers.blocks[0]
    assert hasattr(block, "conv")
    ttt = block.seq_modeling_block
    assert hasattr(ttt, "wk") and hasattr(ttt, "wg") and not hasattr(ttt, "conv_q")
    # the presets keep their meaning: None follows the backbone
    assert get_config("tiny-ttt-linear").has_qk_conv and not get_config("tiny-ttt-linear-base").has_gate


def test_flops_follow_the_flags():
    base = get_config("tiny-ttt-linear-base", n_layers=1)
    D, w = base.d_model, base.conv_width
    f0 = flops.forward_flops(base, 32)
    f1 = flops.forward_flops(base.replace(share_qk=True, use_gate=True, pre_conv=True), 32)
    assert f1.dense == f0.dense  # k projection replaced by the gate
    assert f1.conv - f0.conv == 6 * w * D * 32
    f2 = flops.forward_flops(base.replace(share_qk=True), 32)
    assert f0.dense - f2.dense == 2 * D * D * 32


@pytest.mark.slow  # decoding of converted models with every part on is a default test (test_convert.py)
@pytest.mark.parametrize("case", ["pre_conv only", "share_qk only", "untied"])
def test_mixed_flags_decode_equals_full_pass(case):
    cfg = get_config("tiny-ttt-linear", n_layers=2, init_std=0.2, **MIXED[case])
    model = HybridLM(cfg, rngs=nnx.Rngs(1))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 11)), jnp.int32)
    full = model(tokens)
    cache = model.init_cache(batch_size=2, cache_size=16)
    logits, cache = model(tokens[:, :5], cache=cache)
    steps = [logits]
    for t in range(5, 11):
        logits, cache = model(tokens[:, t:t + 1], cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=2e-5, atol=2e-5)


@pytest.mark.slow  # also covered by the untied fixtures of test_convert.py
def test_untied_head_is_used():
    cfg = get_config("tiny-ttt-linear-base", n_layers=1, tie_word_embeddings=False)
    model = HybridLM(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.ones((1, 3), jnp.int32)
    before = forward(model, tokens)
    model.lm_head.kernel[...] = 2 * model.lm_head.kernel[...]
    np.testing.assert_allclose(forward(model, tokens), 2 * before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value", [("pre_conv", "yes"), ("use_gate", 1.5), ("tie_word_embeddings", None),
                                         ("norm_eps", 0.0), ("attn_block_size", -1), ("attn_block_size", 2.5)])
def test_bad_flag_values(field, value):
    with pytest.raises(ValueError, match=field):
        get_config("tiny-ttt-linear", **{field: value})
