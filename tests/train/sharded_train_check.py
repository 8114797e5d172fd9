"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (test_train_sharded.py does).

1. Two train steps sharded data x fsdp x tensor = 2 x 2 x 2 give the loss and parameters of one device
   (float32, relative 1e-5).
2. A run saved on a 2 x 2 x 2 mesh restores onto 1 x 4 x 2 (orbax reshards) and continues: its
   parameters match the uninterrupted 2 x 2 x 2 run's.
Prints "OK" at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _train_helpers import make_corpus  # noqa: E402

from ttc_jax.train import config as C  # noqa: E402
from ttc_jax.train import optim, sharding as S, trainer  # noqa: E402
from ttc_jax.train.evaluate import load_run  # noqa: E402
from ttc_jax.train.step import make_train_step  # noqa: E402

assert jax.device_count() == 8, jax.devices()
MODEL = ["n_layers=2", "d_model=32", "n_heads=4", "ffn_dim=64", "mini_batch_size=8"]
TRAIN = ["seq_len=32", "batch_size=8", "warmup_steps=2", "lr=1e-2", "log_every=1", "eval_batches=1",
         "eval_every=100", "save_every=100"]


def rel_err(a, b):
    """||a - b|| / ||b|| (per parameter tensor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def steps_on(mesh_cfg: S.MeshConfig, devices, batches):
    mcfg, tcfg = C.run_config("tiny-hybrid", MODEL + TRAIN)
    tx = optim.make_optimizer(tcfg)
    mesh = S.make_mesh(mesh_cfg, devices=devices)
    graphdef, _, shardings = trainer._abstract_train_state(mcfg, tcfg, tx, mesh)
    fn = make_train_step(graphdef, tx, tcfg, lr_mult_fn=lambda s: optim.ttt_lr_mult(tcfg, 0.1, s),
                         schedule=optim.lr_schedule(tcfg), with_stats=True)
    with S.use_mesh(mesh):
        state = trainer._init_state(mcfg, tcfg, tx, shardings)
        step = jax.jit(fn, in_shardings=(shardings, S.batch_sharding(mesh)), out_shardings=(shardings, None))
        losses = []
        for b in batches:
            state, met = step(state, jax.device_put(b, S.batch_sharding(mesh)))
            losses.append(float(met["loss"]))
    return losses, jax.device_get(state.params), state


def check_sharded_step():
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        t = rng.integers(0, 256, (8, 33), dtype=np.int32)
        mask = (rng.random((8, 32)) > 0.1).astype(np.float32)
        batches.append({"inputs": t[:, :-1], "targets": t[:, 1:], "mask": mask})
    l1, p1, _ = steps_on(S.MeshConfig(1, 1, 1), jax.devices()[:1], batches)
    l8, p8, st8 = steps_on(S.MeshConfig(2, 2, 2), jax.devices(), batches)
    for a, b in zip(l8, l1):
        assert abs(a - b) <= 1e-5 * abs(b), (l8, l1)
    errs = {jax.tree_util.keystr(k): rel_err(a, b) for (k, a), b in
            zip(jax.tree_util.tree_flatten_with_path(p8)[0], jax.tree.leaves(p1))}
    worst = max(errs.values())
    flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
    total = rel_err(flat(p8), flat(p1))
    # all parameters together within 1e-5; each tensor within 1e-4 (zero-initialised biases' gradients are
    # sums that nearly cancel, so float32 reassociation moves their Adam updates more, relatively)
    assert total <= 1e-5 and worst <= 1e-4, (total, sorted(errs.items(), key=lambda kv: -kv[1])[:3])
    # the parameters really are sharded over fsdp and tensor
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(st8.params)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
    print(f"sharded step: loss {l8} vs {l1}, params rel err {total:.2e} (worst tensor {worst:.2e})")


def check_restore_on_other_mesh(root):
    data = make_corpus(root)
    args = MODEL + TRAIN + [f"data_dir={data}"]
    full = os.path.join(root, "full")
    trainer.train("tiny-hybrid", full, steps=4, overrides=args + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
                  progress=False)
    part = os.path.join(root, "part")
    trainer.train("tiny-hybrid", part, steps=4, overrides=args + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
                  progress=False, stop_after=2)
    s = trainer.train("tiny-hybrid", part, steps=4, overrides=args + ["mesh.data=1", "mesh.fsdp=4",
                                                                      "mesh.tensor=2"], progress=False)
    assert s["start_step"] == 2
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(s["state"].params)}
    assert any("'fsdp'" in sp for sp in specs), specs
    a = load_run(full)[4]["params"]
    b = load_run(part, mesh_shape=C.MeshShape(8, 1, 1))[4]["params"]
    worst = max(rel_err(x, y) for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(a)))
    assert worst <= 1e-4, worst
    print(f"restore on another mesh: worst param rel err {worst:.2e}")


if __name__ == "__main__":
    check_sharded_step()
    with tempfile.TemporaryDirectory() as d:
        check_restore_on_other_mesh(d)
    print("OK")
