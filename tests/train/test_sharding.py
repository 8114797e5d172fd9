"""Device mesh and logical-axis sharding: every parameter named, names -> mesh axes by the one rules table,
a sharded (2 x 2 x 2 on 8 host devices, in a subprocess) forward and gradient equal to one device, bad meshes."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn import HybridLM, get_config
from ttc_jax.nn.partitioning import LOGICAL_AXIS_RULES, constrain, logical_to_spec, param_axes
from ttc_jax.train.sharding import (MeshConfig, check_divisibility, make_mesh, maybe_initialize_distributed,
                                    param_shardings, shard_batch)

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = dict(LOGICAL_AXIS_RULES)


def expected_spec(axes):
    out = []
    for name in axes:
        target = RULES[name] if name else None
        out.append(list(target) if isinstance(target, tuple) else target)
    return out


@pytest.mark.parametrize("preset,overrides", [
    ("tiny-hybrid", {}),
    ("tiny-ttt-mlp-base", {"scan_layers": False}),
    ("tiny-transformer", {"tie_word_embeddings": False}),
    ("tiny-hybrid", {"n_layers": 6}),  # one scanned group of 4 and 2 unscanned layers
])
def test_every_parameter_has_logical_axes_with_a_rule(preset, overrides):
    cfg = get_config(preset, **overrides)
    model = nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0)))  # shapes and metadata, no compute
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = param_axes(v)
        where = "/".join(map(str, path))
        assert axes is not None and len(axes) == v.ndim, (where, v.shape, axes)
        assert all(a is None or a in RULES for a in axes), (where, axes)
        assert (axes[0] == "layers") == (cfg.scan_layers and path[0] == "layers"), (where, axes)
        logical_to_spec(axes, LOGICAL_AXIS_RULES)  # no mesh axis used twice


def test_constrain_is_a_no_op_without_a_mesh():
    x = jax.numpy.ones((2, 3, 4))
    assert constrain(x, "activation_batch", "activation_length", "activation_embed") is x


def test_bad_meshes_are_one_line_errors():
    cfg = get_config("tiny-hybrid")  # 4 heads, d_model 64, ffn 128, vocab 256
    with pytest.raises(ValueError, match=r"mesh data x fsdp x tensor = 2 x 1 x 1 = 2 devices, but there are 1"):
        make_mesh(MeshConfig(data=2))
    with pytest.raises(ValueError, match="mesh.tensor=0"):
        MeshConfig(tensor=0)
    cases = [(MeshConfig(data=2, fsdp=2), 6, "batch_size=6 is not divisible by mesh data x fsdp = 4"),
             (MeshConfig(tensor=8), 8, "n_heads=4 is not divisible by mesh tensor = 8"),
             (MeshConfig(fsdp=3), 6, "d_model=64 is not divisible by mesh fsdp = 3")]
    for mesh_cfg, batch, message in cases:
        with pytest.raises(ValueError, match=message):
            check_divisibility(cfg, batch, mesh_cfg)
    check_divisibility(cfg, 8, MeshConfig(data=2, fsdp=2, tensor=2))


def test_single_host_distributed_init_is_a_no_op(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS", "TTC_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert maybe_initialize_distributed() is False and calls == []
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert maybe_initialize_distributed() is False  # a one-task SLURM job is a single host
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert maybe_initialize_distributed() is True and calls[-1]["coordinator_address"] is None  # JAX detects SLURM
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert maybe_initialize_distributed() is True
    assert calls[-1] == {"coordinator_address": None, "num_processes": 4, "process_id": 3}
    monkeypatch.setenv("TTC_DISTRIBUTED", "0")
    assert maybe_initialize_distributed() is False and len(calls) == 2
    monkeypatch.setenv("TTC_DISTRIBUTED", "yes")
    with pytest.raises(ValueError, match="TTC_DISTRIBUTED='yes'"):
        maybe_initialize_distributed()


@pytest.fixture(scope="module")
def sharded_run():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharded_forward_check.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_forward_and_gradient_equal_one_device(sharded_run):  # shares the subprocess run below
    r = sharded_run
    assert r["n_devices"] == 8
    assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5 * abs(r["loss"][0])
    assert r["logits_rel_err"] <= 1e-5
    assert r["logits_spec"] == [["data", "fsdp"], None, "tensor"]
    # relative 1e-5 per parameter; a gradient far below the largest one (e.g. the row factors', whose
    # entries are sums that cancel) is compared at 1e-5 of a thousandth of the largest: float32 sums
    # in another order
    floor = 1e-3 * r["grad_max_abs"]
    bad = {k: g for k, g in r["grads"].items() if g["err"] > 1e-5 * max(g["max_abs"], floor)}
    assert not bad, bad
    assert len(r["grads"]) == len(r["params"])


def test_parameters_are_sharded_as_the_rules_say(sharded_run):
    params = sharded_run["params"]
    sharded = 0
    for path, p in params.items():
        assert p["spec"] == expected_spec(p["axes"]), (path, p)
        sharded += any(s is not None for s in p["spec"])
    assert params["embed/embedding"]["spec"] == ["tensor", "fsdp"]
    assert params["layers/blocks/0/feed_forward/w1/kernel"]["spec"] == [None, "fsdp", "tensor"]
    assert params["layers/blocks/2/seq_modeling_block/wo/kernel"]["spec"] == [None, "tensor", "fsdp"]
    assert params["layers/blocks/0/seq_modeling_block/fast_weights/w1"]["spec"][:2] == [None, "tensor"]
    assert sharded >= len(params) // 2


def test_param_shardings_on_a_one_device_mesh():
    model = nnx.eval_shape(lambda: HybridLM(get_config("tiny-hybrid"), rngs=nnx.Rngs(0)))
    shardings = param_shardings(model, make_mesh(MeshConfig()))
    leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(leaves) == len(jax.tree.leaves(nnx.state(model)))
    assert all(isinstance(v.get_value(), jax.sharding.NamedSharding) for v in leaves)
    batch = {"inputs": np.arange(8, dtype=np.int32).reshape(2, 4), "mask": np.ones((2, 4), np.float32)}
    out = shard_batch(batch, make_mesh(MeshConfig()))
    assert all(isinstance(out[k], jax.Array) and np.array_equal(out[k], batch[k]) for k in batch)


def test_indivisible_parameter_is_a_one_line_error(sharded_run):
    assert sharded_run["indivisible_error"] == (
        "parameter embed/embedding dimension 0 (vocab) of size 250 is not divisible by mesh axes tensor = 4")
