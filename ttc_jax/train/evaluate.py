"""`ttc eval`: validation loss, perplexity and loss by position of a saved model."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from ttc_jax.train import config as C
from ttc_jax.train import optim
from ttc_jax.train import trainer as TR
from ttc_jax.train.checkpoint import Checkpointer


def _locate(workdir: str | None, checkpoint: str | None) -> tuple[str, int | None]:
    """(workdir, step or None for the latest) from --workdir or a checkpoint path DIR/checkpoints/<step>."""
    if checkpoint:
        path = os.path.abspath(checkpoint.rstrip("/"))
        base = os.path.basename(path)
        if not base.isdigit() or not os.path.isdir(path):
            raise ValueError(f"--checkpoint={checkpoint!r} is not a checkpoint step folder (…/checkpoints/<step>)")
        return os.path.dirname(os.path.dirname(path)), int(base)
    if not workdir:
        raise ValueError("give --workdir DIR or --checkpoint DIR/checkpoints/<step>")
    return os.path.abspath(workdir), None


def load_run(workdir: str | None = None, checkpoint: str | None = None, *, step: int | None = None,
             preset: str | None = None, overrides: list[str] | None = None, mesh_shape: C.MeshShape | None = None):
    """(model config, train config, preset name, graphdef, restored state dict, step, mesh) of a saved run.

    The config comes from the workdir's config.json, or from `preset` + `overrides` when given (checked
    against the checkpoint's shapes). Restored onto `mesh_shape` (default: all devices on the data axis)."""
    workdir, ck_step = _locate(workdir, checkpoint)
    step = step if step is not None else ck_step
    cfg_path = os.path.join(workdir, TR.CONFIG_FILE)
    if preset is not None:
        mcfg, tcfg = C.run_config(preset, overrides)
        name = preset
    elif os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            mcfg, tcfg, name = C.from_json(json.load(f))
    else:
        raise ValueError(f"{workdir!r} has no {TR.CONFIG_FILE}; pass --config PRESET")
    tcfg = tcfg.replace(mesh=mesh_shape or C.MeshShape(jax.device_count(), 1, 1))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise ValueError(f"{workdir!r} has no checkpoints/")
    ck = Checkpointer(ckpt_dir, read_only=True)
    if step is None:
        step = ck.latest_step()
        if step is None:
            raise ValueError(f"{ckpt_dir!r} holds no complete checkpoint")
    elif step not in ck.all_steps():
        raise ValueError(f"step={step} is not a checkpoint in {ckpt_dir!r}; available: {ck.all_steps()}")
    mesh = TR.make_mesh(tcfg)
    tx = optim.make_optimizer(tcfg)
    graphdef, target, shardings = TR._abstract_train_state(mcfg, tcfg, tx, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
    state, _ = ck.restore(step, target._asdict())
    return mcfg, tcfg, name, graphdef, state, step, mesh


def evaluate_checkpoint(workdir: str | None = None, checkpoint: str | None = None, *, step: int | None = None,
                        n_batches: int | None = None, preset: str | None = None,
                        overrides: list[str] | None = None, batch_size: int | None = None,
                        data_dir: str | None = None) -> dict:
    """Validation loss, perplexity and loss by position of a checkpoint on its run's validation split
    (or `data_dir`'s)."""
    mcfg, tcfg, name, graphdef, state, step, mesh = load_run(workdir, checkpoint, step=step, preset=preset,
                                                             overrides=overrides)
    if tcfg.objective != "lm":
        raise ValueError(f"{_locate(workdir, checkpoint)[0]!r} is a reward-model run (objective {tcfg.objective!r}); "
                         "its validation BCE and AUROC are in metrics.jsonl (every eval_every steps)")
    if data_dir:
        tcfg = tcfg.replace(data_dir=data_dir)
    data = TR.resolve_data_dir(tcfg)
    bs = batch_size or tcfg.micro_batch_size
    bs = max(jax.device_count(), bs - bs % jax.device_count())
    with TR.S.use_mesh(mesh):
        out = TR.evaluate(graphdef, state["params"], data, mcfg, seq_len=tcfg.seq_len, batch_size=bs,
                          n_batches=n_batches, mesh=mesh)
    out.update(step=step, workdir=_locate(workdir, checkpoint)[0], preset=name, seq_len=tcfg.seq_len)
    return out


def write_report(result: dict, stem: str) -> None:
    """stem.json (loss, perplexity, loss by position) and stem.png (the loss-by-position curve)."""
    from ttc_jax.train import metrics as M
    curve = np.asarray(result["loss_by_position"], float)
    M.save_loss_by_position(stem + "_by_position", {f"{result['preset']} step {result['step']}": curve})
    with open(stem + ".json", "w") as f:
        json.dump({k: v for k, v in result.items() if k != "loss_by_position"}
                  | {"loss_by_position": [None if not np.isfinite(x) else float(x) for x in curve]}, f, indent=1)
