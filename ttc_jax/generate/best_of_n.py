"""N samples per prompt in one compiled call: the prompt prefilled once, its caches shared by the N samples.

    samples = sample(model, prompts, n=N, max_new_tokens=L, rng=key, temperature=..., top_k=..., top_p=...,
                     min_p=..., stop_tokens=(...), prompt_lengths=None, mode="batch", cache=None)
    samples.tokens [P, N, L], .lengths [P, N], .logprobs [P, N, L], .finished [P, N]

The P prompt rows are prefilled once (`prefill_prompts`), or taken from `cache` (a DecodeState with one
row per prompt). Inside the compiled call the prompt state is broadcast to the N samples, which then
decode in one `lax.while_loop`:

- mode="vmap": the model's one-token step is `jax.vmap`ped over samples (in_axes 0 on the broadcast
  caches, the position shared);
- mode="batch": samples are folded into the model's batch axis (P * N rows, prompt-major).

Both give the same candidates for the same keys: sample i of prompt p draws its step-s token with
fold_in(keys[p, i], s), keys = `sample_keys(rng, P, N)` (or keys [P, N] passed as rng), so a loop of
single-sample calls with keys[p, i] reproduces it. `DEFAULT_MODE` is the faster of the two as measured
by benchmarks/bon_sampler.py. With several devices the P x N rows are sharded over the mesh's "data" axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from ttc_jax.generate.loop import (Samples, _check_room, _is_uniform, advance, as_prompt_batch, check_count,
                                   check_stop_tokens, prefill_prompts, row_keys, sampling_loop)
from ttc_jax.generate.sampling import sampling_params
from ttc_jax.generate.state import DecodeState, map_rows, repeat_rows

MODES = ("vmap", "batch")
DEFAULT_MODE = "batch"


def sample_keys(rng, n_prompts: int, n: int) -> jax.Array:
    """The [P, N] keys `sample` uses for one key `rng`."""
    return row_keys(rng, (n_prompts, n))


def default_mesh():
    """A 1-D mesh over all devices with the (Auto) axis "data", or None on one device."""
    if jax.device_count() < 2:
        return None
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def _shard_axis(x, axis: int, mesh):
    """x constrained to be split over mesh axis "data" along `axis` (left as is when it does not divide)."""
    if mesh is None or x.shape[axis] % mesh.shape["data"]:
        return x
    spec = [None] * x.ndim
    spec[axis] = "data"
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


@functools.partial(nnx.jit, static_argnames=("n", "max_new_tokens", "params", "pad_id", "uniform", "mode", "mesh"))
def _sample(model, state: DecodeState, keys, stop_tokens, *, n, max_new_tokens, params, pad_id, uniform, mode,
            mesh):
    P = state.n_rows
    kw = dict(max_new_tokens=max_new_tokens, params=params, pad_id=pad_id)
    if mode == "batch":
        rows = repeat_rows(state, n)  # P * N rows, prompt-major
        rows = map_rows(lambda a, ax: _shard_axis(a, ax, mesh), rows)
        start = rows.pos[0] if uniform else rows.pos
        fn = functools.partial(advance, model, uniform=uniform, hold=False)
        out, _ = sampling_loop(fn, rows, _shard_axis(keys.reshape(-1), 0, mesh), start, stop_tokens, **kw)
        return jax.tree.map(lambda a: _shard_axis(a, 0, mesh).reshape(P, n, *a.shape[1:]), out)
    # vmap over samples: a leading N axis on every state array, the clock shared by the N samples
    start = state.pos[0] if uniform else state.pos
    split = 0 if mesh is None or n % mesh.shape["data"] == 0 else None
    rows = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), state)
    if split is not None:
        rows = jax.tree.map(lambda a: _shard_axis(a, 0, mesh), rows)
    else:
        rows = jax.vmap(lambda st: map_rows(lambda a, ax: _shard_axis(a, ax, mesh), st))(rows)

    def fn(st, tok, clock, active):
        return jax.vmap(lambda s_, t_, a_: advance(model, s_, t_, clock, a_, uniform=uniform, hold=False))(
            st, tok, active)

    axis = 0 if split is not None else 1
    out, _ = sampling_loop(fn, rows, _shard_axis(keys.T, axis, mesh), start, stop_tokens, **kw)
    return jax.tree.map(lambda a: jnp.swapaxes(_shard_axis(a, axis, mesh), 0, 1), out)  # [N, P, ...] -> [P, N, ...]


def sample(model, prompts=None, *, n: int, max_new_tokens: int, rng, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None, stop_tokens=(),
           prompt_lengths=None, pad_id: int = 0, mode: str = DEFAULT_MODE, cache: DecodeState | None = None,
           mesh="auto") -> Samples:
    """N sampled completions of each of P prompts in one compiled call; see the module docstring.

    prompts: int [P, T] (+ prompt_lengths [P]) or a list of token lists; or None with `cache`, a DecodeState
    of P rows from `prefill_prompts` (its cache_size must hold prompt + max_new_tokens).
    rng: one key, or keys [P, N]. mesh: "auto" (all devices when there are several), a Mesh with an Auto
    axis "data", or None (no sharding constraints).
    """
    n = check_count("n", n)
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {MODES}")
    params = sampling_params(model.cfg.vocab_size, temperature, top_k, top_p, min_p)
    stop = check_stop_tokens(stop_tokens, model.cfg.vocab_size)
    if cache is None:
        if prompts is None:
            raise ValueError("prompts=None; expected prompts, or a prefilled `cache`")
        tokens, lengths = as_prompt_batch(prompts, prompt_lengths, model.cfg.vocab_size)
        cache = prefill_prompts(model, tokens, prompt_lengths=lengths,
                                cache_size=int(lengths.max()) + max_new_tokens)
    elif prompts is not None:
        raise ValueError("pass either prompts or a prefilled cache, not both")
    elif not isinstance(cache, DecodeState):
        raise ValueError(f"cache has type {type(cache).__name__}; expected a DecodeState from prefill_prompts")
    _check_room(cache, max_new_tokens, f"max_new_tokens={max_new_tokens}")
    keys = sample_keys(rng, cache.n_rows, n)
    if mesh == "auto":
        mesh = default_mesh()
    return _sample(model, cache, keys, stop, n=n, max_new_tokens=max_new_tokens, params=params,
                   pad_id=int(pad_id), uniform=_is_uniform(cache.pos), mode=mode, mesh=mesh)
