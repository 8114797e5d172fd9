"""Pretrained checkpoints: our folder format (orbax + config.json + model card), shipped names,
and converters from/to the published TTT formats (ttt-lm-jax msgpack streams, the ttt-lm-pytorch
port's safetensors). Name table: `ttc_jax.checkpoints.names`."""

from ttc_jax.checkpoints.conversion import convert, export
from ttc_jax.checkpoints.foreign import (export_safetensors, infer_ttt_lm_jax_config, load_safetensors,
                                         load_ttt_lm_jax, read_ttt_lm_jax)
from ttc_jax.checkpoints.params import build_model, expected_shapes, model_params
from ttc_jax.checkpoints.store import checkpoints_dir, from_pretrained, known_names, save_pretrained
from ttc_jax.checkpoints.training import load_train_workdir

__all__ = ["build_model", "checkpoints_dir", "convert", "expected_shapes", "export", "export_safetensors",
           "from_pretrained", "infer_ttt_lm_jax_config", "known_names", "load_safetensors", "load_train_workdir",
           "load_ttt_lm_jax", "model_params", "read_ttt_lm_jax", "save_pretrained"]
