"""Fidelity to ttt-lm-jax's training code: initial-weight stds, the inner base-lr ramp (eta multiplier),
and the weight-decay mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn.config import get_config
from ttc_jax.nn.model import HybridLM
from ttc_jax.train import optim
from ttc_jax.train.config import TrainConfig

# Official initialisers (ttt-lm-jax at 6f529b1, after "Fix TTT MLP Init"), by parameter name:
# every Dense / Embed / TTT fast weight W1, W2 / learnable_ttt_lr kernel: N(0, initializer_range=0.02);
# depthwise nn.Conv kernels: flax's default lecun_normal, fan_in = conv width -> std 1/sqrt(4) = 0.5;
# all biases, learnable_token_idx and the learnable-lr bias: 0; norm scales 1, norm biases 0.
_NORMAL_002 = ("embedding", "ttt_lr_weight", "w1", "w2", "wq", "wk", "wv", "wo", "wg", "w3")


def official_init(names: tuple[str, ...], conv_width: int):
    """('normal', std) or ('const', value) for the parameter at this path."""
    leaf, parent = names[-1], names[-2] if len(names) > 1 else ""
    if leaf == "kernel" and parent in ("conv1", "conv_q", "conv_k"):
        return "normal", 1.0 / np.sqrt(conv_width)
    if leaf == "kernel" and parent in _NORMAL_002:
        return "normal", 0.02
    if leaf in _NORMAL_002 and parent == "fast_weights" or leaf in ("embedding", "ttt_lr_weight"):
        return "normal", 0.02
    if leaf in ("bias", "b1", "b2", "learnable_token_idx", "ttt_lr_bias", "ttt_norm_bias"):
        return "const", 0.0
    if leaf in ("scale", "ttt_norm_scale"):
        return "const", 1.0
    raise AssertionError(f"no official initialiser known for parameter {'/'.join(names)}")


def init_params(cfg, seed=0):
    """The model's initial parameters as a pure dict (initialised under jit: one compile, fast)."""
    return jax.jit(lambda: nnx.to_pure_dict(nnx.split(HybridLM(cfg, rngs=nnx.Rngs(seed)))[1]))()


@pytest.mark.parametrize("preset", ["tiny-hybrid", "tiny-ttt-mlp-base", "tiny-transformer"])
def test_every_initial_weight_std_matches_the_official_code(preset):
    # wide enough that every normal tensor has >= 4096 samples: the std estimate is within ~3%
    cfg = get_config(preset, d_model=256, n_heads=4, ffn_dim=256, n_layers=4)
    params = init_params(cfg, 1)
    seen = set()
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        kind, value = official_init(names, cfg.conv_width)
        x = np.asarray(x, np.float64)
        if kind == "const":
            np.testing.assert_array_equal(x, value, err_msg="/".join(names))
        else:
            assert x.size >= 1024, names
            assert abs(x.std() / value - 1) < 0.06, ("/".join(names), x.std(), value)
            assert abs(x.mean()) < 4 * value / np.sqrt(x.size), ("/".join(names), x.mean())
        seen.add(names[-1] if names[-2] not in ("conv1", "conv_q", "conv_k") else "conv_kernel")
    if "ttt_mlp" in cfg.layer_pattern:
        assert {"w1", "w2", "b1", "b2"} <= seen


def test_ttt_mlp_w2_is_not_depth_scaled():
    """The pre-fix code divided W2's std by sqrt(2 n_layers) (= 4 at 8 layers); the fixed code does not."""
    cfg = get_config("tiny-ttt-mlp", d_model=256, n_heads=4, n_layers=8)
    fw = init_params(cfg)["layers"]["blocks"][0]["seq_modeling_block"]["fast_weights"]
    w1, w2 = np.asarray(fw["w1"]), np.asarray(fw["w2"])
    assert abs(w2.std() / w1.std() - 1) < 0.05


def _logits_fn(cfg):
    """jit(tokens, mult) -> logits of a fresh model (seed 0) with eta multiplied by mult."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0))))[0], init_params(cfg)
    return jax.jit(lambda t, mult: nnx.merge(graphdef, params)(t, ttt_lr_mult=mult))


TOKENS = jax.random.randint(jax.random.key(3), (2, 24), 0, 256)


@pytest.mark.parametrize("preset,base", [pytest.param("tiny-ttt-linear", 1.0, marks=pytest.mark.slow), ("tiny-ttt-mlp", 0.1)])
def test_eta_multiplier_equals_a_scaled_base_lr_and_defaults_to_no_change(preset, base):
    """Oracle: multiplying eta by c equals the same weights with a TTT base lr c times larger; a traced
    multiplier of 1 gives the logits of a call without one (to float32 rounding: another XLA program;
    the default Python 1.0 skips the multiply, so its program is the unchanged one)."""
    cfg = get_config(preset, n_layers=2, mini_batch_size=8)
    c = 0.37
    fn = _logits_fn(cfg)
    got = fn(TOKENS, jnp.float32(c))
    want = _logits_fn(cfg.replace(ttt_base_lr=base * c))(TOKENS, 1.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-6)
    graphdef = nnx.split(nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0))))[0]
    default = jax.jit(lambda t: nnx.merge(graphdef, init_params(cfg))(t))(TOKENS)
    one = fn(TOKENS, jnp.float32(1.0))
    np.testing.assert_allclose(np.asarray(one), np.asarray(default), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(got), np.asarray(one), atol=1e-4)


def test_ttt_base_lr_ramp_matches_the_official_formula():
    cfg = TrainConfig(steps=100, warmup_steps=20, ttt_base_lr_init=0.01)
    for step0 in (0, 1, 7, 19, 20, 50):
        s = step0 + 1  # official 1-based step
        official = (0.01 + min(1.0, (s - 1) / 20) * (0.1 - 0.01)) / 0.1
        assert float(optim.ttt_lr_mult(cfg, 0.1, step0)) == pytest.approx(official, rel=1e-6)
    assert optim.ttt_lr_mult(TrainConfig(), 0.1, 5) == 1.0  # disabled by default
    assert float(optim.ttt_lr_mult(cfg.replace(ttt_base_lr_warmup=5), 0.1, 5)) == pytest.approx(1.0)


def test_weight_decay_skips_norms_and_biases_only():
    params = init_params(get_config("tiny-hybrid"))
    mask = optim.weight_decay_mask(params)
    for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
        names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        is_norm_or_bias = (names[-1] in ("bias", "scale", "b1", "b2", "ttt_lr_bias", "ttt_norm_scale",
                                         "ttt_norm_bias", "learnable_token_idx"))
        assert decayed == (not is_norm_or_bias), names
    # the AdamW update leaves a zero-gradient norm scale unchanged and shrinks a zero-gradient kernel
    tx = optim.make_optimizer(TrainConfig(steps=10, warmup_steps=0, lr=0.1, weight_decay=0.5))
    upd = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(params)
    assert float(jnp.abs(upd["ln_f"]["scale"]).max()) == 0.0
    assert float(jnp.abs(upd["embed"]["embedding"]).max()) > 0.0
