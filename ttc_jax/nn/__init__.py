"""Flax NNX modules: TTT layers, attention, blocks and the hybrid language model."""

from ttc_jax.nn.attention import Attention, KVCache, init_kv_cache
from ttc_jax.nn.config import LAYER_KINDS, PRESETS, ModelConfig, get_config
from ttc_jax.nn.model import Block, HybridLM, LayerGroup
from ttc_jax.nn.ttt_layer import TTTLayer

__all__ = ["Attention", "Block", "HybridLM", "KVCache", "LAYER_KINDS", "LayerGroup", "ModelConfig",
           "PRESETS", "TTTLayer", "get_config", "init_kv_cache"]
