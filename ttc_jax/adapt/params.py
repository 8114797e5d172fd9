"""Flax plumbing: a HybridLM as flat {path: array} parameters and back, and each block parameter's layer."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx


def _key(entry):
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    raise TypeError(f"unexpected pytree key {entry!r}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How to rebuild the model from flat parameters (hashable: a static argument of the compiled calls)."""

    graphdef: object
    treedef: object
    paths: tuple  # parameter paths in treedef leaf order

    def unflatten(self, flat: dict) -> nnx.State:
        return jax.tree_util.tree_unflatten(self.treedef, [flat[p] for p in self.paths])

    def merge(self, flat: dict, rest) -> nnx.Module:
        return nnx.merge(self.graphdef, self.unflatten(flat), rest)


def split_model(model: nnx.Module) -> tuple[Layout, dict, nnx.State]:
    """(layout, {path: array} of every nnx.Param, the remaining state)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = []
    for keypath, _ in leaves:
        path = tuple(_key(e) for e in keypath)
        paths.append(path[:-1] if path and path[-1] == "value" else path)
    return Layout(graphdef, treedef, tuple(paths)), {p: a for p, (_, a) in zip(paths, leaves)}, rest


def block_layers(model, paths) -> dict:
    """{path: layer index} for block parameters; stacked (scanned) ones get per-row layer indices."""
    n_groups = getattr(model, "n_groups", None)
    period = len(model.cfg.layer_pattern)
    out = {}
    for p in paths:
        if len(p) < 3 or p[1] != "blocks":
            continue
        j = int(p[2])
        if p[0] == "layers":
            out[p] = tuple(g * period + j for g in range(n_groups)) if n_groups else j
        elif p[0] == "layers_rest":
            out[p] = n_groups * period + j
    return out
