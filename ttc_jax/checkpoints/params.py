"""A model's parameters as one flat dict per layer, and a model built from such a dict.

The flat names are the NNX attribute paths of `HybridLM` with the layer index
spelled out, whether or not the layers are stacked for `lax.scan`:

    embed.embedding                      [V, D]
    layers.{i}.<path inside the Block>   e.g. layers.3.seq_modeling_block.wq.kernel [D, D]
    ln_f.scale                           [D]
    lm_head.kernel                       [D, V]   (untied embeddings only)

This is the common currency of the converters: a foreign checkpoint is mapped
to these names, and `build_model` checks names and shapes against the
architecture before it builds anything.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.model import HybridLM


def abstract_model(cfg: ModelConfig) -> HybridLM:
    """The model's structure with ShapeDtypeStructs for values (nothing is initialised)."""
    return nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0)))


def _flat_entries(cfg: ModelConfig, state) -> list[tuple[str, tuple, int | None, object]]:
    """(flat name, state path, group-stacked period offset j or None, leaf) for every parameter leaf.

    For scanned models one state leaf holds n_groups layers (leading axis); it is listed once with
    its in-group index j; `_names_for` expands it to the layer indices g * period + j.
    """
    out = []
    for path, leaf in nnx.to_flat_state(state):
        keys = tuple(str(k) for k in path)
        if keys[0] == "layers":
            if keys[1] != "blocks":
                raise AssertionError(f"unexpected model state path {keys}")
            out.append((".".join(keys[3:]), path, int(keys[2]), leaf))
        else:
            out.append((".".join(keys), path, None, leaf))
    return out


def _layer_indices(cfg: ModelConfig, j: int) -> list[int]:
    period = cfg.scan_period if cfg.scan_layers else None
    if period:
        return [g * period + j for g in range(cfg.n_layers // period)]
    return [j]


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat name -> shape of every parameter of a HybridLM with this config."""
    _, state = nnx.split(abstract_model(cfg), nnx.Param)
    shapes = {}
    for name, _, j, leaf in _flat_entries(cfg, state):
        shape = tuple(leaf.shape)
        if j is None:
            shapes[name] = shape
        else:
            stacked = bool(cfg.scan_layers and cfg.scan_period)
            for i in _layer_indices(cfg, j):
                shapes[f"layers.{i}.{name}"] = shape[1:] if stacked else shape
    return dict(sorted(shapes.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(name: str):
    parts = name.split(".")
    if parts[0] == "layers":
        return (1, int(parts[1]), ".".join(parts[2:]))
    return (0 if parts[0] == "embed" else 2, 0, name)


def model_params(model: HybridLM) -> dict[str, np.ndarray]:
    """Every parameter of `model` under its flat per-layer name, as host numpy arrays."""
    cfg = model.cfg
    state = nnx.state(model, nnx.Param)
    stacked = bool(cfg.scan_layers and cfg.scan_period)
    out = {}
    for name, _, j, leaf in _flat_entries(cfg, state):
        value = np.asarray(jax.device_get(leaf[...]))
        if j is None:
            out[name] = value
        elif stacked:
            for g, i in enumerate(_layer_indices(cfg, j)):
                out[f"layers.{i}.{name}"] = value[g]
        else:
            out[f"layers.{j}.{name}"] = value
    return dict(sorted(out.items(), key=lambda kv: _sort_key(kv[0])))


def check_params(cfg: ModelConfig, params: dict, *, source: str) -> None:
    """ValueError unless `params` has exactly the names and shapes of a HybridLM with `cfg`."""
    want = expected_shapes(cfg)
    missing = [n for n in want if n not in params]
    unknown = [n for n in params if n not in want]
    if missing:
        raise ValueError(f"{source}: missing {len(missing)} parameter(s) the architecture needs, e.g. "
                         f"{missing[:4]}")
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} parameter(s) the architecture does not have, e.g. "
                         f"{unknown[:4]}")
    for n, shape in want.items():
        got = tuple(np.shape(params[n]))
        if got != shape:
            raise ValueError(f"{source}: parameter {n} has shape {got}; the architecture expects {shape}")


def build_model(cfg: ModelConfig, params: dict, *, source: str = "params", dtype=None) -> HybridLM:
    """A HybridLM with `cfg` whose parameters are `params` (flat names; checked first).

    Floating values are stored as float32, or as `dtype` when given.
    """
    check_params(cfg, params, source=source)
    param_dtype = jnp.dtype(dtype) if dtype is not None else jnp.float32
    graphdef, state = nnx.split(abstract_model(cfg), nnx.Param)
    stacked = bool(cfg.scan_layers and cfg.scan_period)
    leaves = {}
    for name, path, j, leaf in _flat_entries(cfg, state):
        if j is None:
            value = np.asarray(params[name])
        elif stacked:
            value = np.stack([np.asarray(params[f"layers.{i}.{name}"]) for i in _layer_indices(cfg, j)])
        else:
            value = np.asarray(params[f"layers.{j}.{name}"])
        leaves[path] = jnp.asarray(value, dtype=param_dtype)
    flat = nnx.to_flat_state(state)
    new = nnx.from_flat_state([(path, leaf.replace(leaves[path])) for path, leaf in flat])
    return nnx.merge(graphdef, new)
