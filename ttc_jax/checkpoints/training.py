"""A `ttc train` workdir (config.json + orbax checkpoints/<step>/state) as a model, for shipping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ttc_jax.checkpoints.params import abstract_model
from ttc_jax.checkpoints.store import config_from_dict


def train_steps(workdir: Path) -> list[int]:
    """Completed checkpoint steps of a workdir (orbax marks each finished step)."""
    root = workdir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / "state").is_dir() and (p / "_CHECKPOINT_METADATA").is_file())


def load_train_workdir(workdir: str | os.PathLike, *, step: int | None = None):
    """(model, config, info) from the parameters of a `ttc train` checkpoint (latest step by default).

    info: {"file", "dtypes", "step", "preset", "train" (the run's training config)}.
    """
    import orbax.checkpoint as ocp

    wd = Path(workdir).expanduser()
    f = wd / "config.json"
    if not f.is_file():
        raise ValueError(f"workdir={str(wd)!r} has no config.json; expected a `ttc train` workdir")
    try:
        doc = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    cfg = config_from_dict(doc.get("model"), source=str(f))
    steps = train_steps(wd)
    if not steps:
        raise ValueError(f"workdir={str(wd)!r} has no completed checkpoint under checkpoints/")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"step={step}; workdir {str(wd)!r} has checkpoints at steps {steps}")
    state_dir = wd / "checkpoints" / str(step) / "state"
    graphdef, abstract_state = nnx.split(abstract_model(cfg), nnx.Param)
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(state_dir)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
        if not tree or "params" not in tree:
            raise ValueError(f"{state_dir}: no readable parameter metadata")
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
        try:
            params = ckptr.restore(state_dir, target)["params"]
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{state_dir}: corrupted or incomplete ({type(e).__name__})") from None
    flat = {".".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    leaves = []
    for path, var in nnx.to_flat_state(abstract_state):
        key = ".".join(str(k) for k in path)
        if key not in flat or tuple(flat[key].shape) != tuple(var.shape):
            raise ValueError(f"{state_dir}: parameter {key} is missing or has another shape than config.json says")
        leaves.append((path, var.replace(jnp.asarray(flat[key], jnp.float32))))
    if len(flat) != len(leaves):
        raise ValueError(f"{state_dir}: {len(flat) - len(leaves)} parameter(s) the architecture does not have")
    model = nnx.merge(graphdef, nnx.from_flat_state(leaves))
    info = {"file": str(state_dir), "dtypes": sorted({str(v.dtype) for v in flat.values()}), "step": step,
            "preset": doc.get("preset"), "train": doc.get("train", {})}
    return model, cfg, info
