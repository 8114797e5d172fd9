"""Samples from N adapted copies in one compiled call: `jax.vmap` over the copies' weights of the prefill
and the best-of-N sampler (the "adapt per sample; generate; select" recipe).

    many = ttt_adapt_many(model, prefix, n=N, steps=..., lr=..., key=k)
    s = sample_adapted(many, prompts, n_per_copy=m, max_new_tokens=L, rng=key)   # Samples [P, N * m]

Sample j of a prompt comes from copy j // m. Copy i uses key copy_keys(rng, N)[i] exactly as
`sample(many.copy(i), prompts, n=m, rng=copy_keys(rng, N)[i])` does, so a loop over copies reproduces it.
Each copy prefills the prompt with its own weights (nothing is shared between copies).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from ttc_jax.adapt.api import AdaptResult, copy_keys
from ttc_jax.generate.best_of_n import _sample, sample_keys
from ttc_jax.generate.loop import Samples, _prefill, as_prompt_batch, check_count, check_stop_tokens
from ttc_jax.generate.sampling import sampling_params
from ttc_jax.generate.state import cache_batch_axes


@functools.partial(jax.jit, static_argnames=("graphdef", "common", "cache_size", "axes", "m", "max_new_tokens",
                                             "params", "pad_id", "uniform"))
def _sample_copies(graphdef, copies, rest, tokens, lengths, keys, stop, *, common, cache_size, axes, m,
                   max_new_tokens, params, pad_id, uniform):
    def one(weights, k):
        model = nnx.merge(graphdef, weights, rest)
        state = _prefill(model, tokens, lengths, common=common, cache_size=cache_size, axes=axes)
        return _sample(model, state, k, stop, n=m, max_new_tokens=max_new_tokens, params=params, pad_id=pad_id,
                       uniform=uniform, mode="batch", mesh=None)

    return jax.vmap(one)(copies, keys)  # [N, P, m, ...]


def sample_adapted(result: AdaptResult, prompts, *, max_new_tokens: int, rng, n_per_copy: int = 1,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   min_p: float | None = None, stop_tokens=(), prompt_lengths=None, pad_id: int = 0) -> Samples:
    """`n_per_copy` samples per prompt from each adapted copy of `result` (a `ttt_adapt_many` result, or a
    `ttt_adapt` result as one copy): Samples [P, N * n_per_copy], copy-major. Prompts and sampling
    arguments as `ttc_jax.generate.sample`; rng: one key (copy i samples with copy_keys(rng, N)[i])."""
    if not isinstance(result, AdaptResult):
        raise ValueError(f"result is a {type(result).__name__}; expected the AdaptResult of ttt_adapt or "
                         "ttt_adapt_many")
    m = check_count("n_per_copy", n_per_copy)
    max_new_tokens = check_count("max_new_tokens", max_new_tokens)
    model = nnx.merge(result.layout.graphdef,
                      result.params if result.n_copies is None else jax.tree.map(lambda a: a[0], result.params),
                      result.rest)
    V = model.cfg.vocab_size
    params = sampling_params(V, temperature, top_k, top_p, min_p)
    stop = check_stop_tokens(stop_tokens, V)
    tokens, lengths = as_prompt_batch(prompts, prompt_lengths, V)
    tokens = tokens[:, : int(lengths.max())]
    copies = result.params if result.n_copies is not None else jax.tree.map(lambda a: a[None], result.params)
    n = result.n_copies or 1
    P = tokens.shape[0]
    keys = jax.numpy.stack([sample_keys(k, P, m) for k in copy_keys(rng, n)])  # [N, P, m]
    out = _sample_copies(result.layout.graphdef, copies, result.rest, jax.numpy.asarray(tokens),
                         jax.numpy.asarray(lengths), keys, stop, common=int(lengths.min()),
                         cache_size=int(lengths.max()) + max_new_tokens, axes=cache_batch_axes(model), m=m,
                         max_new_tokens=max_new_tokens, params=params, pad_id=int(pad_id),
                         uniform=bool((lengths == lengths[0]).all()))
    return jax.tree.map(lambda a: jax.numpy.moveaxis(a, 0, 1).reshape(P, n * m, *a.shape[3:]), out)
