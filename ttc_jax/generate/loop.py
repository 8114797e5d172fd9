"""Autoregressive generation: prefill once, then a compiled `lax.while_loop` of one-token steps.

Public API (all rows carry their own position, see `ttc_jax.generate.state`):

    state = prefill_prompts(model, prompts, prompt_lengths=None, cache_size=None)   -> DecodeState [R rows]
    out, state = continue_from(model, state, max_new_tokens, rng=..., temperature=..., top_k=..., top_p=...,
                               min_p=..., stop_tokens=(...), pad_id=0)           -> (Samples [R], DecodeState)
    state = feed(model, state, tokens, lengths=None)    consume given tokens (ragged) without sampling
    tokens = generate(model, prompts, max_new_tokens, rng=..., ...)                -> int32 [B, max_new_tokens]

`continue_from` samples until each row has emitted a stop token (which it
consumes) or `max_new_tokens` tokens; the returned state has consumed exactly
each row's new tokens, so step-level search calls it again (e.g. with
stop_tokens=(newline,)) after `select_rows` / `repeat_rows` on the state.
Row r's token at step s is drawn with key fold_in(keys[r], s): results do not
depend on how rows are batched.

`prefill` / `decode` are the older equal-length API (one position for the
batch, a fixed number of steps), kept for the demo.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from ttc_jax.generate.sampling import SamplingParams, sample_rows, sample_token, sampling_params
from ttc_jax.generate.state import (DecodeState, _clear_positions, cache_batch_axes, keep_rows, step_rows)
from ttc_jax.ttt.tracing import is_traced


# -- the older equal-length API -------------------------------------------------------------------

@functools.partial(nnx.jit, static_argnames=("cache_size",))
def prefill(model, prompt: Int[Array, "B T"], cache_size: int):
    """Logits of the prompt's last position [B, V] and the decoding cache after it."""
    logits, cache = model(prompt, cache=model.init_cache(prompt.shape[0], cache_size))
    return logits[:, -1], cache


@functools.partial(nnx.jit, static_argnames=("steps", "temperature", "top_k"))
def decode(model, last_logits, cache, rng, *, steps: int, temperature: float, top_k: int | None):
    """Sample `steps` tokens [B, steps], feeding each back through a one-token model call."""

    def step(carry, _):
        logits, cache, rng = carry
        rng, sub = jax.random.split(rng)
        token = sample_token(logits, sub, temperature=temperature, top_k=top_k)
        logits, cache = model(token[:, None], cache=cache)
        return (logits[:, -1], cache, rng), token

    (_, cache, _), tokens = jax.lax.scan(step, (last_logits, cache, rng), None, length=steps)
    return tokens.T, cache


# -- outputs --------------------------------------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["tokens", "lengths", "logprobs", "finished"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Samples:
    """Sampled continuations; leading dims [...] are [P, N] from `sample`, [R] from `continue_from`.

    tokens:   int32 [..., L], pad_id after a row's last token;
    lengths:  int32 [...], new tokens per row, the stop token included;
    logprobs: float32 [..., L], log-softmax of the model's logits (temperature 1, unfiltered) at the
              chosen token, 0 after the last token;
    finished: bool [...], whether the row emitted a stop token (else it hit max_new_tokens).
    """

    tokens: Int[Array, "... L"]
    lengths: Int[Array, "..."]
    logprobs: Float[Array, "... L"]
    finished: Bool[Array, "..."]


# -- argument checks ------------------------------------------------------------------------------

def check_count(name: str, value, lowest: int = 1) -> int:
    """An int (Python or NumPy integer, not bool) >= lowest, else a ValueError naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < lowest:
        raise ValueError(f"{name}={value!r}; expected an int >= {lowest}")
    return int(value)


def check_stop_tokens(stop_tokens, vocab_size: int) -> jax.Array:
    """int32 [S] stop ids (a traced argument of the compiled loops, so changing them does not recompile;
    [-1] for none)."""
    ids = (stop_tokens,) if isinstance(stop_tokens, numbers.Integral) else tuple(np.asarray(stop_tokens).ravel())
    for t in ids:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or not 0 <= t < vocab_size:
            shown = int(t) if isinstance(t, numbers.Integral) else repr(t)
            raise ValueError(f"stop_tokens contains {shown}; expected token ids in [0, {vocab_size})")
    return jnp.asarray(sorted({int(t) for t in ids}) or [-1], jnp.int32)


def as_prompt_batch(prompts, prompt_lengths, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [B, T] right-padded with 0, lengths int32 [B]) from an int [B, T] array plus optional
    lengths [B], or from a list of token lists of different lengths."""
    if isinstance(prompts, (list, tuple)) and (len(prompts) == 0 or not np.isscalar(prompts[0])):
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths must be None when prompts is a list of token lists")
        rows = [np.asarray(p) for p in prompts]
        if not rows:
            raise ValueError("prompts is empty; expected at least one prompt")
        for i, r in enumerate(rows):
            if r.ndim != 1 or r.size == 0:
                raise ValueError(f"prompts[{i}] has shape {r.shape}; expected a non-empty list of token ids")
        lengths = np.array([r.size for r in rows], np.int32)
        tokens = np.zeros((len(rows), lengths.max()), np.int64)
        for i, r in enumerate(rows):
            tokens[i, :r.size] = r
        prompt_lengths = lengths
    else:
        tokens = np.asarray(prompts)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise ValueError(f"prompts has shape {tokens.shape}; expected [B, T] with B >= 1 or a list of token lists")
        if tokens.shape[1] == 0:
            raise ValueError("prompts has T=0 tokens; expected at least 1 token per prompt")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"prompts has dtype {tokens.dtype}; expected integer token ids")
    B, T = tokens.shape
    if prompt_lengths is None:
        lengths = np.full((B,), T, np.int32)
    else:
        lengths = np.asarray(prompt_lengths)
        if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"prompt_lengths has shape {lengths.shape} and dtype {lengths.dtype}; "
                             f"expected integers of shape ({B},)")
        bad = np.flatnonzero((lengths < 1) | (lengths > T))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"prompt_lengths[{i}]={int(lengths[i])}; expected 1 <= length <= T={T} "
                             "(an empty prompt has nothing to continue)")
    valid = np.arange(T)[None, :] < lengths[:, None]
    ids = tokens[valid]
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = int(ids.min() if ids.min() < 0 else ids.max())
        raise ValueError(f"prompts contains id {bad} outside the vocabulary [0, {vocab_size})")
    return np.where(valid, tokens, 0).astype(np.int32), lengths.astype(np.int32)


def row_keys(rng, shape: tuple[int, ...]) -> jax.Array:
    """Typed PRNG keys of `shape`: `rng` split (one key given) or used as is (keys of that shape given)."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.dtype != jnp.uint32 or rng.shape[-1:] != (2,):
            raise ValueError(f"rng has dtype {rng.dtype} and shape {rng.shape}; expected a jax.random.key")
        rng = jax.random.wrap_key_data(rng)
    if rng.shape == ():
        return jax.random.split(rng, int(np.prod(shape))).reshape(shape)
    if rng.shape != tuple(shape):
        raise ValueError(f"rng has shape {rng.shape}; expected one key or keys of shape {tuple(shape)}")
    return rng


# -- prefill and feeding --------------------------------------------------------------------------

def _feed_columns(model, state: DecodeState, tokens, lengths, uniform: bool) -> DecodeState:
    """Rows consume tokens[r, :lengths[r]] one column at a time (inactive rows keep their state)."""
    start = state.pos[0] if uniform else state.pos

    def body(t, state):
        active = t < lengths
        col = jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1)
        logits, cache = step_rows(model, state, col, start + t, uniform)
        return keep_rows(state, cache, logits[:, 0], active)

    return jax.lax.fori_loop(0, tokens.shape[1], body, state)


@functools.partial(nnx.jit, static_argnames=("common", "cache_size", "axes"))
def _prefill(model, tokens, lengths, *, common: int, cache_size: int, axes: tuple) -> DecodeState:
    B = tokens.shape[0]
    logits, cache = model(tokens[:, :common], cache=model.init_cache(B, cache_size))  # mini-batch fast path
    state = DecodeState(cache=_clear_positions(cache), pos=jnp.full((B,), common, jnp.int32),
                        logits=logits[:, -1], axes=axes, cache_size=cache_size)
    if tokens.shape[1] > common:  # the ragged tails, one token per step, rows at the same position
        state = _feed_columns(model, state, tokens[:, common:], lengths - common, uniform=True)
    return state


def prefill_prompts(model, prompts, *, prompt_lengths=None, cache_size: int | None = None) -> DecodeState:
    """The decoding state after each prompt (one row per prompt; see `as_prompt_batch` for the forms).

    The tokens all prompts have (the shortest length) go through one batched call (the TTT mini-batch
    form); longer prompts' remaining tokens are consumed one step at a time, shorter rows held.
    cache_size: positions the KV caches hold (default: the longest prompt; pass prompt + new tokens).
    """
    tokens, lengths = as_prompt_batch(prompts, prompt_lengths, model.cfg.vocab_size)
    T = tokens.shape[1]
    if cache_size is None:
        cache_size = int(lengths.max())
    cache_size = check_count("cache_size", cache_size)
    if cache_size < lengths.max():
        raise ValueError(f"cache_size={cache_size} is smaller than the longest prompt ({int(lengths.max())} tokens)")
    tokens = tokens[:, : int(lengths.max())] if T > lengths.max() else tokens
    return _prefill(model, jnp.asarray(tokens), jnp.asarray(lengths), common=int(lengths.min()),
                    cache_size=cache_size, axes=cache_batch_axes(model))


def _is_uniform(pos) -> bool:
    """Whether every row is known (concretely) to be at the same position."""
    if is_traced(pos):
        return False
    p = np.asarray(pos)
    return bool((p == p.flat[0]).all())


def _check_room(state: DecodeState, new: int, what: str) -> None:
    if is_traced(state.pos):
        return
    furthest = int(np.asarray(state.pos).max())
    if furthest + new > state.cache_size:
        raise ValueError(f"{what}: {furthest} tokens consumed + {new} new = {furthest + new} positions, more than "
                         f"the cache holds (cache_size={state.cache_size}); prefill with a larger cache_size")


@functools.partial(nnx.jit, static_argnames=("uniform",))
def _feed(model, state, tokens, lengths, *, uniform: bool):
    return _feed_columns(model, state, tokens, lengths, uniform)


def feed(model, state: DecodeState, tokens, lengths=None) -> DecodeState:
    """Rows consume given tokens (int [R, T]; row r its first lengths[r] >= 0, default all T), no sampling."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or tokens.shape[0] != state.n_rows:
        raise ValueError(f"tokens has shape {tokens.shape}; expected [R={state.n_rows}, T]")
    model.check_tokens(tokens)
    lengths = jnp.full((state.n_rows,), tokens.shape[1], jnp.int32) if lengths is None else jnp.asarray(lengths)
    _check_room(state, tokens.shape[1], "feed")
    return _feed(model, state, tokens, lengths.astype(jnp.int32), uniform=_is_uniform(state.pos))


# -- the sampling loop ----------------------------------------------------------------------------

def advance(model, state: DecodeState, tokens: Int[Array, " R"], clock, active, *, uniform: bool,
            hold: bool) -> DecodeState:
    """Rows consume one token each at position `clock`; with hold, rows not `active` keep their state."""
    logits, cache = step_rows(model, state, tokens[:, None], clock, uniform)
    if hold:
        return keep_rows(state, cache, logits[:, 0], active)
    return dataclasses.replace(state, cache=cache, logits=logits[:, 0], pos=state.pos + 1)


def sampling_loop(advance_fn, state, keys, start, stop_tokens, *, max_new_tokens: int, params: SamplingParams,
                  pad_id: int):
    """(Samples with leading dims keys.shape, final state): sample, record, feed back, until every row stopped.

    advance_fn(state, tokens, clock, active) consumes one token per row (tokens, active shaped like keys);
    the clock of step s is start + s; stop_tokens: int32 [S] (-1 for none). Runs as one `lax.while_loop`
    that exits when every row has stopped.
    """
    rows = keys.shape
    V = state.logits.shape[-1]
    flat_keys = keys.reshape(-1)
    stop = jnp.asarray(stop_tokens, jnp.int32)
    init = (jnp.zeros((), jnp.int32), state,
            jnp.full((*rows, max_new_tokens), pad_id, jnp.int32), jnp.zeros((*rows, max_new_tokens), jnp.float32),
            jnp.zeros(rows, bool), jnp.zeros(rows, jnp.int32))

    def cond(c):
        s, _, _, _, finished, _ = c
        return (s < max_new_tokens) & ~jnp.all(finished)

    def body(c):
        s, state, toks, lps, finished, lengths = c
        logits = state.logits.reshape(-1, V)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(flat_keys, s)
        tok = sample_rows(logits, step_keys, params)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=-1)[:, 0]
        tok, lp = tok.reshape(rows), lp.reshape(rows)
        active = ~finished
        tok = jnp.where(active, tok, pad_id)
        lp = jnp.where(active, lp, 0.0)
        toks = jax.lax.dynamic_update_index_in_dim(toks, tok, s, axis=-1)
        lps = jax.lax.dynamic_update_index_in_dim(lps, lp, s, axis=-1)
        lengths = lengths + active.astype(jnp.int32)
        finished = finished | (active & jnp.isin(tok, stop))
        state = advance_fn(state, tok, start + s, active)
        return s + 1, state, toks, lps, finished, lengths

    _, state, toks, lps, finished, lengths = jax.lax.while_loop(cond, body, init)
    return Samples(tokens=toks, lengths=lengths, logprobs=lps, finished=finished), state


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "params", "pad_id", "uniform", "hold"))
def _continue(model, state, keys, stop_tokens, *, max_new_tokens, params, pad_id, uniform, hold):
    start = state.pos[0] if uniform else state.pos
    fn = functools.partial(advance, model, uniform=uniform, hold=hold)
    return sampling_loop(fn, state, keys, start, stop_tokens, max_new_tokens=max_new_tokens, params=params,
                         pad_id=pad_id)


def continue_from(model, state: DecodeState, max_new_tokens: int, *, rng, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                  stop_tokens=(), pad_id: int = 0) -> tuple[Samples, DecodeState]:
    """Sample up to max_new_tokens per row from `state` (e.g. one reasoning step until a newline).

    rng: one key (split into one per row) or keys [R]. Returns (Samples [R], the state after each row's
    new tokens: a row that stopped holds its state from just after its stop token).
    """
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    params = sampling_params(model.cfg.vocab_size, temperature, top_k, top_p, min_p)
    stop = check_stop_tokens(stop_tokens, model.cfg.vocab_size)
    _check_room(state, max_new_tokens, f"max_new_tokens={max_new_tokens}")
    keys = row_keys(rng, (state.n_rows,))
    return _continue(model, state, keys, stop, max_new_tokens=max_new_tokens, params=params,
                     pad_id=int(pad_id), uniform=_is_uniform(state.pos), hold=True)


def generate(model, prompts, max_new_tokens: int, *, rng: jax.Array, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             stop_tokens=(), prompt_lengths=None, pad_id: int = 0, return_logprobs: bool = False,
             cache_size: int | None = None):
    """Continue every prompt by up to `max_new_tokens` sampled tokens.

    prompts: int [B, T] (with prompt_lengths [B] for right-padded rows of different lengths) or a list of
    token lists. Greedy when temperature == 0; top-k, top-p, min-p as in `ttc_jax.generate.sampling`.
    rng: one key (split into one per row) or keys [B].
    Returns tokens int32 [B, max_new_tokens] (pad_id after a stop token), or (tokens, logprobs float32
    [B, max_new_tokens]) with return_logprobs.
    """
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    tokens, lengths = as_prompt_batch(prompts, prompt_lengths, model.cfg.vocab_size)
    needed = int(lengths.max()) + max_new_tokens
    if cache_size is None:
        cache_size = needed
    cache_size = check_count("cache_size", cache_size)
    if cache_size < needed:
        raise ValueError(f"cache_size={cache_size} is smaller than prompt + new tokens = {needed}")
    params = sampling_params(model.cfg.vocab_size, temperature, top_k, top_p, min_p)
    stop = check_stop_tokens(stop_tokens, model.cfg.vocab_size)
    keys = row_keys(rng, (tokens.shape[0],))
    state = prefill_prompts(model, tokens, prompt_lengths=lengths, cache_size=cache_size)
    out, _ = _continue(model, state, keys, stop, max_new_tokens=max_new_tokens, params=params,
                       pad_id=int(pad_id), uniform=_is_uniform(state.pos), hold=False)
    return (out.tokens, out.logprobs) if return_logprobs else out.tokens
