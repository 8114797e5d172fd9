"""Golden tests: the eight checkpoints written by the published code (ttt-lm-jax and the
ttt-lm-pytorch port) convert and reproduce the logits that code computed.

These are the project's only tests against the published implementations themselves: they pin
the model's semantics (RoPE positions t mod K, eta scaling, gelu_tanh, conv layouts, norms).
"""

import numpy as np
import pytest
from conftest import BLOCKS, forward, golden_dir, rel_l2

from ttc_jax.checkpoints import load_safetensors, load_ttt_lm_jax

TOL = 1e-4  # the README's generous tolerance; about 5e-7 is measured


@pytest.mark.parametrize("block", BLOCKS)
def test_ttt_lm_jax_golden(block):
    d = golden_dir("ttt-lm-jax", block)
    model, cfg, info = load_ttt_lm_jax(d)
    assert info["dtypes"] == ["bfloat16"] and info["skipped"] >= 1 and info["step"] is not None
    assert cfg.layer_pattern == (block.replace("_base", ""),)
    assert cfg.backbone == ("transformer" if block.endswith("_base") else "mamba")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.vocab_size, cfg.mini_batch_size) == \
        (128, 2, 4, 256, 128, 16)
    err = rel_l2(forward(model, np.load(d / "tokens.npy")), np.load(d / "logits.npy"))
    assert err < TOL, f"{block}: relative L2 {err:.3e}"


@pytest.mark.parametrize("block", BLOCKS)
def test_ttt_lm_pytorch_golden(block):
    d = golden_dir("ttt-lm-pytorch", block)
    model, cfg, _ = load_safetensors(d)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.vocab_size) == (64, 2, 4, 128, 100)
    tokens = np.load(d / "tokens.npy")
    assert tokens.shape[1] % cfg.mini_batch_size  # a partial last mini-batch
    err = rel_l2(forward(model, tokens), np.load(d / "logits.npy"))
    assert err < TOL, f"{block}: relative L2 {err:.3e}"


def test_port_base_lr_comes_from_its_config():
    """The port's TTTConfig default ttt_base_lr is 1.0 for TTT-MLP too; its golden ttt_mlp sets 0.1."""
    _, mlp, _ = load_safetensors(golden_dir("ttt-lm-pytorch", "ttt_mlp"))
    _, mlp_base, _ = load_safetensors(golden_dir("ttt-lm-pytorch", "ttt_mlp_base"))
    assert mlp.ttt_base_lr == 0.1 and mlp_base.ttt_base_lr == 1.0


def test_wrong_base_lr_breaks_parity():
    """The golden test can fail: the official ttt_base_lr matters at this tolerance."""
    d = golden_dir("ttt-lm-jax", "ttt_linear_base")
    model, _, _ = load_ttt_lm_jax(d, ttt_base_lr=0.5)
    assert rel_l2(forward(model, np.load(d / "tokens.npy")), np.load(d / "logits.npy")) > 1e-3
