"""Flax NNX modules: TTT layers, attention, blocks and the hybrid language model."""

from ttc_jax.nn.config import LAYER_KINDS, PRESETS, ModelConfig, get_config

__all__ = ["LAYER_KINDS", "PRESETS", "ModelConfig", "get_config"]
