"""One tiny TTT model for the adaptation tests: two TTT-Linear layers stacked by the layer scan."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.model import HybridLM

TINY = ModelConfig(vocab_size=48, d_model=16, n_layers=2, n_heads=2, ffn_dim=32, layer_pattern=("ttt_linear",),
                   backbone="transformer", mini_batch_size=4, max_seq_len=32, remat_group=0)
# attention and TTT layers, two stacked groups plus an unscanned rest layer, Mamba backbone
HYBRID = ModelConfig(vocab_size=48, d_model=16, n_layers=5, n_heads=2, ffn_dim=32,
                     layer_pattern=("ttt_linear", "attention"), backbone="mamba", mini_batch_size=4, max_seq_len=32,
                     remat_group=0)


@pytest.fixture(scope="session")
def tiny():
    return HybridLM(TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def hybrid():
    return HybridLM(HYBRID, rngs=nnx.Rngs(1))


@pytest.fixture(scope="session")
def prefix():
    return jax.random.randint(jax.random.key(7), (2, 13), 0, 48)


@pytest.fixture(scope="session")
def forward():
    """Logits of a model, compiled once per model structure (adapted copies share the original's)."""
    return nnx.jit(lambda model, tokens: model(tokens))
