"""Run with 8 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8): save a model, restore
it straight onto a 1 x 2 x 4 mesh with from_pretrained(mesh=...), print one JSON line of results."""

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import ttc_jax
from ttc_jax.checkpoints import model_params
from ttc_jax.nn import HybridLM, get_config

assert jax.device_count() == 8, jax.devices()
cfg = get_config("tiny-ttt-linear", n_layers=2, d_model=32, vocab_size=64, tie_word_embeddings=False)
model = HybridLM(cfg, rngs=nnx.Rngs(3))
tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)).astype(np.int32)
with tempfile.TemporaryDirectory() as tmp:
    path = ttc_jax.save_pretrained(model, cfg, Path(tmp) / "ckpt")
    mesh = jax.make_mesh((1, 2, 4), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    sharded, _ = ttc_jax.from_pretrained(path, mesh=mesh)
    replicated, _ = ttc_jax.from_pretrained(path, mesh=mesh, shardings=lambda v: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
emb = sharded.embed.embedding[...]
head = sharded.lm_head.kernel[...]
want, got = model_params(model), model_params(sharded)
print(json.dumps({
    "embed_spec": [None if a is None else a for a in emb.sharding.spec],
    "embed_shard_shape": list(emb.addressable_shards[0].data.shape),
    "head_devices": len(head.sharding.device_set),
    "replicated_spec": list(replicated.embed.embedding[...].sharding.spec),
    "params_equal": all(np.array_equal(got[k], want[k]) for k in want),
    "logits_max_diff": float(np.abs(np.asarray(nnx.jit(lambda m, t: m(t))(sharded, tokens))
                                    - np.asarray(model(tokens))).max()),
}))
sys.stdout.flush()
