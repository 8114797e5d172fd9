"""Save / load a model's parameters with its config: a flat .npz (no pickle) plus config JSON, written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import jax
import numpy as np
from flax import nnx


def _flat(state) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
        out[key] = np.asarray(leaf)
    return out


def _atomic_write(path: str, write) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(path: str, model: nnx.Module, meta: dict | None = None) -> None:
    """`path`.npz holds the nnx.Param leaves; `path`.json the model's config (and `meta`)."""
    arrays = _flat(nnx.state(model, nnx.Param))

    def write_npz(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic_write(path + ".npz", write_npz)
    info = {"config": dataclasses.asdict(model.cfg), "meta": meta or {}}
    _atomic_write(path + ".json", lambda tmp: open(tmp, "w").write(json.dumps(info, indent=1)))


def load_info(path: str) -> dict:
    if not os.path.exists(path + ".json") or not os.path.exists(path + ".npz"):
        raise ValueError(f"checkpoint={path!r}: expected {path}.json and {path}.npz")
    with open(path + ".json") as f:
        return json.load(f)


def load_into(path: str, model: nnx.Module) -> nnx.Module:
    """Overwrite `model`'s nnx.Param leaves with the saved ones (shapes must match)."""
    state = nnx.state(model, nnx.Param)
    flat = _flat(state)
    with np.load(path + ".npz", allow_pickle=False) as z:
        if set(z.files) != set(flat):
            raise ValueError(f"checkpoint={path!r} holds parameters {sorted(set(z.files) ^ set(flat))[:4]}... "
                             "that do not match the model")
        leaves, treedef = jax.tree_util.tree_flatten(state)
        keys = list(_flat(state))
        new = []
        for k, old in zip(keys, leaves):
            if z[k].shape != np.shape(old):
                raise ValueError(f"checkpoint={path!r}: {k} has shape {z[k].shape}; the model expects {np.shape(old)}")
            new.append(jax.numpy.asarray(z[k]))
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, new))
    return model


def _config(info: dict):
    from ttc_jax.nn.config import ModelConfig

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()}
    return ModelConfig(**cfg)


def load_policy(path: str):
    """A HybridLM restored from `save(path, model)`."""
    from ttc_jax.nn.model import HybridLM

    model = HybridLM(_config(load_info(path)), rngs=nnx.Rngs(0))
    return load_into(path, model)


def load_reward(path: str):
    """A RewardModel restored from `save(path, rm, {"separator": ..., "kind": ...})`."""
    from ttc_jax.nn.prm import RewardModel

    info = load_info(path)
    meta = info.get("meta", {})
    if "separator" not in meta or "kind" not in meta:
        raise ValueError(f"checkpoint={path!r} is not a reward model (its meta lacks 'separator' / 'kind')")
    rm = RewardModel(_config(info), separator=int(meta["separator"]), kind=meta["kind"], rngs=nnx.Rngs(0))
    return load_into(path, rm)
