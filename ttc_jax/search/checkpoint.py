"""Save / load models for search.

- `save` / `load_into` / `load_policy` / `load_reward`: a flat .npz (no pickle) plus config JSON, written
  atomically (working checkpoints of the training scripts);
- `save_reward_pretrained` / `load_reward_pretrained`: a RewardModel as a `ttc_jax.save_pretrained`
  checkpoint folder (its backbone, loadable by `from_pretrained` on its own) plus `reward_head.npz`, with
  the head's kind and separator in config.json's metadata; a shipped name such as "arith-prm" resolves
  like `from_pretrained`'s.

`load_policy` and `load_reward` accept either form (a path prefix of .npz/.json, or a checkpoint folder / name).
"""

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


def _is_npz(path: str) -> bool:
    return os.path.exists(path + ".npz") or os.path.exists(path + ".json")


def load_policy(path: str):
    """A HybridLM restored from `save(path, model)`, or from a checkpoint folder / shipped name (`from_pretrained`)."""
    from ttc_jax.nn.model import HybridLM

    if not _is_npz(path):
        from ttc_jax.checkpoints import from_pretrained

        return from_pretrained(path)[0]
    model = HybridLM(_config(load_info(path)), rngs=nnx.Rngs(0))
    return load_into(path, model)


def load_reward(path: str):
    """A RewardModel restored from `save(path, rm, {"separator": ..., "kind": ...})`, or from a
    `save_reward_pretrained` folder / shipped name."""
    from ttc_jax.nn.prm import RewardModel

    if not _is_npz(path):
        return load_reward_pretrained(path)
    info = load_info(path)
    meta = info.get("meta", {})
    if "separator" not in meta or "kind" not in meta:
        raise ValueError(f"checkpoint={path!r} is not a reward model (its meta lacks 'separator' / 'kind')")
    rm = RewardModel(_config(info), separator=int(meta["separator"]), kind=meta["kind"], rngs=nnx.Rngs(0))
    return load_into(path, rm)


HEAD_FILE = "reward_head.npz"


def save_reward_pretrained(rm, path: str, *, card: str | None = None, metadata: dict | None = None,
                           overwrite: bool = False):
    """Write a RewardModel as a checkpoint folder: the backbone via `save_pretrained`, the head in
    `reward_head.npz`, kind and separator in config.json's metadata["reward_model"]. Atomic."""
    from pathlib import Path

    from ttc_jax.checkpoints.store import _replace_dir, save_pretrained

    dst = Path(path).expanduser().absolute()
    if dst.exists() and not overwrite:
        raise ValueError(f"path={str(dst)!r} already exists; pass overwrite=True to replace it")
    meta = dict(metadata or {})
    meta["reward_model"] = {"kind": rm.kind, "separator": rm.separator}
    tmp = dst.with_name(f".{dst.name}.rm-tmp-{os.getpid()}")
    try:
        save_pretrained(rm.backbone, rm.cfg, tmp, card=card, tokenizer="byte", metadata=meta, overwrite=True)
        head = {"kernel": np.asarray(rm.head.kernel.value), "bias": np.asarray(rm.head.bias.value)}
        with open(tmp / HEAD_FILE, "wb") as f:
            np.savez(f, **head)
        _replace_dir(tmp, dst, overwrite)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def load_reward_pretrained(name_or_path: str):
    """A RewardModel from a `save_reward_pretrained` folder or a shipped name (e.g. "arith-prm")."""
    from ttc_jax.checkpoints.store import load_folder, resolve
    from ttc_jax.nn.prm import RewardModel

    folder = resolve(name_or_path)
    backbone, cfg, doc = load_folder(folder)
    meta = (doc.get("metadata") or {}).get("reward_model")
    if not isinstance(meta, dict) or "kind" not in meta or "separator" not in meta or \
            not os.path.isfile(os.path.join(folder, HEAD_FILE)):
        raise ValueError(f"checkpoint={str(folder)!r} is not a reward model (expected metadata.reward_model "
                         f"with 'kind' and 'separator' in config.json and {HEAD_FILE})")
    rm = RewardModel(cfg, separator=int(meta["separator"]), kind=meta["kind"], rngs=nnx.Rngs(0), backbone=backbone)
    with np.load(os.path.join(folder, HEAD_FILE), allow_pickle=False) as z:
        for name in ("kernel", "bias"):
            want = getattr(rm.head, name).value.shape
            if name not in z.files or z[name].shape != want:
                raise ValueError(f"{folder}/{HEAD_FILE}: {name} missing or of shape "
                                 f"{z[name].shape if name in z.files else None}; expected {want}")
            getattr(rm.head, name).value = jax.numpy.asarray(z[name], jax.numpy.float32)
    return rm
