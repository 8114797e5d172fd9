"""Run in a subprocess with 8 host devices by test_sharding.py: a forward pass and the gradient of a
next-token loss of a small hybrid model (TTT-MLP, TTT-Linear, attention; two scanned groups) on
one device, then sharded data x fsdp x tensor = 2 x 2 x 2. Prints one JSON line with the results."""

import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "run with 8 host devices"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ttc_jax.nn import HybridLM, get_config  # noqa: E402
from ttc_jax.nn.partitioning import param_axes  # noqa: E402
from ttc_jax.train.sharding import (MeshConfig, batch_sharding, check_divisibility, make_mesh,  # noqa: E402
                                    param_shardings, shard_batch, shard_model, use_mesh)

jax.config.update("jax_threefry_partitionable", True)
cfg = get_config("tiny-hybrid", d_model=32, n_heads=4, ffn_dim=64, n_layers=6, mini_batch_size=4,
                 layer_pattern=("ttt_mlp", "ttt_linear", "attention"), remat_group=0)
mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
B, T = 4, 12
check_divisibility(cfg, B, mesh_cfg)
model = HybridLM(cfg, rngs=nnx.Rngs(0))
tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, cfg.vocab_size)


def loss_fn(m, x):
    logits = m(x[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, x[:, 1:, None], -1)), logits


@nnx.jit
def forward_and_grad(m, x):
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m, x)
    return loss, logits, grads


def flat(tree):
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(tree))}


loss1, logits1, grads1 = forward_and_grad(model, tokens)
ref = {"loss": float(loss1), "logits": np.asarray(logits1), "grads": flat(grads1)}

mesh = make_mesh(mesh_cfg)
shard_model(model, mesh)
specs = {"/".join(map(str, p)): {"spec": [list(a) if isinstance(a, tuple) else a for a in v[...].sharding.spec],
                                 "axes": list(param_axes(v) or ()), "shape": list(v.shape)}
         for p, v in nnx.to_flat_state(nnx.state(model))}
with use_mesh(mesh):
    x = shard_batch({"tokens": np.asarray(tokens)}, mesh)["tokens"]
    assert x.sharding.is_equivalent_to(batch_sharding(mesh), 2) and np.array_equal(x, tokens)
    loss8, logits8, grads8 = forward_and_grad(model, x)
out = {
    "n_devices": jax.device_count(),
    "loss": [ref["loss"], float(loss8)],
    "logits_rel_err": float(np.abs(np.asarray(logits8) - ref["logits"]).max() / np.abs(ref["logits"]).max()),
    "logits_spec": [list(a) if isinstance(a, tuple) else a for a in logits8.sharding.spec],
    "grad_max_abs": max(float(np.abs(g).max()) for g in ref["grads"].values()),
    "grads": {k: {"err": float(np.abs(np.asarray(v) - ref["grads"][k]).max()),
                  "max_abs": float(np.abs(ref["grads"][k]).max())} for k, v in flat(grads8).items()},
    "params": specs,
}
try:
    param_shardings(HybridLM(cfg.replace(vocab_size=250, n_heads=4), rngs=nnx.Rngs(0)),
                    make_mesh(MeshConfig(data=2, tensor=4)))
    out["indivisible_error"] = None
except ValueError as e:
    out["indivisible_error"] = str(e)
print(json.dumps(out))
sys.stdout.flush()
