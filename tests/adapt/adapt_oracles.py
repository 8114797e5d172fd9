"""Independent oracles for the adaptation tests (no code shared with ttc_jax.adapt)."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx


def flat_params(model_or_state) -> dict:
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    out = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        path = tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keypath)
        out[path[:-1] if path[-1] == "value" else path] = np.asarray(leaf)
    return out


def mean_next_token_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def layer_of(path, cfg, n_groups):
    """Layer index of each row of a block parameter (list), or None for non-block parameters."""
    if len(path) < 3 or path[1] != "blocks":
        return None
    period, j = len(cfg.layer_pattern), int(path[2])
    if path[0] == "layers":
        return [g * period + j for g in range(n_groups)] if n_groups else [j]
    return [n_groups * period + j]
