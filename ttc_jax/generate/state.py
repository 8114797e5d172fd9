"""Decoding state with a position per row, and the model's one-step call on it.

The model's own cache (`HybridLM.init_cache`) holds one position for the whole
batch. `DecodeState` wraps it with a position per row, so that rows whose
prompts (or generated steps) have different lengths decode together:

- when every row is at the same position, a step is the model's own batched
  call (scalar position: the TTT mini-batch fast path and `lax.cond` commits
  stay as they are);
- otherwise the model's step is `vmap`ped over rows, each row a batch-1 call
  with its own scalar position (the TTT state's position is set from it).

No padding token ever enters a TTT state: a row that is not consuming a token
in a step keeps its TTT state, convolution windows and logits (a row-wise
select). Its attention KV cache is not selected: the step writes a slot at or
beyond the row's own position, which no query of that row reads before the
row overwrites it with its next real token.

`select_rows` / `repeat_rows` gather rows (beams) of a state by index.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ttc_jax.nn.attention import KVCache
from ttc_jax.ttt.state import TTTState

_AXES: dict = {}


def cache_batch_axes(model) -> tuple[int, ...]:
    """Batch axis of every leaf of the model's cache after a call, -1 for positions (flattened leaf order)."""
    if model.cfg not in _AXES:
        def shapes(b):
            call = lambda: model(jnp.zeros((b, 1), jnp.int32), cache=model.init_cache(b, 2))[1]
            return [s.shape for s in jax.tree.leaves(jax.eval_shape(call))]

        axes = []
        for s1, s2 in zip(shapes(1), shapes(2), strict=True):
            diff = [i for i, (a, b) in enumerate(zip(s1, s2)) if a != b]
            axes.append(diff[0] if diff else -1)
        _AXES[model.cfg] = tuple(axes)
    return _AXES[model.cfg]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["cache", "pos", "logits"],
                   meta_fields=["axes", "cache_size"])
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """Where R rows stand in decoding.

    cache:      the model's cache for R rows (its own position entries are ignored: `pos` is the truth);
    pos:        int32 [R], tokens consumed by each row;
    logits:     float32 [R, V], next-token logits after each row's last consumed token;
    axes:       batch axis of each cache leaf (static);
    cache_size: positions the attention KV caches hold (static); a row can consume up to this many tokens.
    """

    cache: dict
    pos: Int[Array, " R"]
    logits: Float[Array, "R V"]
    axes: tuple = ()
    cache_size: int = 0

    @property
    def n_rows(self) -> int:
        return self.pos.shape[0]


def _axes_tree(state: DecodeState):
    """vmap in/out axes for the cache: the batch axis per leaf, None for positions."""
    return jax.tree.unflatten(jax.tree.structure(state.cache), [None if a < 0 else a for a in state.axes])


def map_rows(fn, state: DecodeState) -> DecodeState:
    """Apply fn(array, axis) to every row-indexed array of the state (cache leaves, pos, logits)."""
    leaves, treedef = jax.tree.flatten(state.cache)
    leaves = [a if ax < 0 else fn(a, ax) for a, ax in zip(leaves, state.axes)]
    return dataclasses.replace(state, cache=jax.tree.unflatten(treedef, leaves),
                               pos=fn(state.pos, 0), logits=fn(state.logits, 0))


def select_rows(state: DecodeState, idx: Int[Array, " M"]) -> DecodeState:
    """A state of M rows: row m is a copy of row idx[m] (beams duplicated or dropped by index)."""
    idx = jnp.asarray(idx, jnp.int32)
    if idx.ndim != 1:
        raise ValueError(f"idx has shape {idx.shape}; expected a 1-D array of row indices")
    return map_rows(lambda a, ax: jnp.take(a, idx, axis=ax), state)


def repeat_rows(state: DecodeState, n: int) -> DecodeState:
    """Every row repeated n times in place: R rows become R * n (row r's copies at r*n .. r*n+n-1)."""
    return map_rows(lambda a, ax: jnp.repeat(a, n, axis=ax), state)


def _set_positions(cache: dict, pos, mini_batch_size: int) -> dict:
    """The cache with its model position set to `pos` and every TTT state's position to pos mod K."""

    def fix(x):
        if isinstance(x, TTTState):
            p = jnp.asarray(pos % mini_batch_size, jnp.int32)
            return dataclasses.replace(x, pos=jnp.broadcast_to(p, jnp.shape(x.pos)))
        return x

    layers = jax.tree.map(fix, cache["layers"], is_leaf=lambda x: isinstance(x, TTTState))
    return {**cache, "pos": jnp.asarray(pos, jnp.int32), "layers": layers}


def _clear_positions(cache: dict) -> dict:
    """Position entries as int32 zeros (they carry no information; keeps loop carries type-stable)."""
    return _set_positions(cache, jnp.zeros((), jnp.int32), 1)


def step_rows(model, state: DecodeState, tokens: Int[Array, "R T"], clock, uniform: bool):
    """(logits [R, T, V], new cache): every row consumes T tokens at positions clock[r] .. clock[r]+T-1.

    uniform: clock is one scalar for all rows (the model's batched call);
    else clock is [R] and the call is vmapped over rows.
    """
    K = model.cfg.mini_batch_size
    if uniform:
        logits, cache = model(tokens, cache=_set_positions(state.cache, clock, K))
        return logits, _clear_positions(cache)
    axes = _axes_tree(state)

    def one(tok, cache, p):
        cache = jax.tree.map(lambda a, ax: a if ax is None else jnp.expand_dims(a, ax), cache, axes,
                             is_leaf=lambda x: x is None)
        logits, cache = model(tok[None], cache=_set_positions(cache, p, K))
        cache = jax.tree.map(lambda a, ax: a if ax is None else jnp.squeeze(a, ax), _clear_positions(cache), axes,
                             is_leaf=lambda x: x is None)
        return logits[0], cache

    return jax.vmap(one, in_axes=(0, axes, 0), out_axes=(0, axes))(tokens, state.cache, clock)


def _kv_leaves(cache) -> list[bool]:
    """For each flattened cache leaf: whether it belongs to an attention KV cache."""
    is_kv = lambda x: isinstance(x, KVCache)
    marked = jax.tree.map(lambda x: jax.tree.map(lambda _: True, x) if is_kv(x) else False, cache, is_leaf=is_kv)
    return jax.tree.leaves(marked)


def keep_rows(state: DecodeState, new_cache: dict, new_logits, active: Bool[Array, " R"]) -> DecodeState:
    """The state after a step in which only `active` rows consumed a token.

    Inactive rows keep their TTT states, windows, logits and positions; KV caches are taken as written.
    """
    old_leaves, treedef = jax.tree.flatten(state.cache)
    new_leaves = jax.tree.leaves(new_cache)
    kv_mask = _kv_leaves(state.cache)
    out = []
    for old, new, ax, kv in zip(old_leaves, new_leaves, state.axes, kv_mask, strict=True):
        if ax < 0 or kv:
            out.append(new)
        else:
            shape = [1] * new.ndim
            shape[ax] = active.shape[0]
            out.append(jnp.where(active.reshape(shape), new, old))
    return dataclasses.replace(state, cache=jax.tree.unflatten(treedef, out),
                               pos=state.pos + active.astype(jnp.int32),
                               logits=jnp.where(active[:, None], new_logits, state.logits))
