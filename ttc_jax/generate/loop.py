"""Autoregressive generation: one prefill call, then a compiled scan of one-token steps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Int

from ttc_jax.generate.sampling import sample_token


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


def generate(model, prompt: Int[Array, "B T"], max_new_tokens: int, *, rng: jax.Array,
             temperature: float = 1.0, top_k: int | None = None, cache_size: int | None = None):
    """Continue every prompt row by `max_new_tokens` sampled tokens; returns [B, max_new_tokens]."""
    prompt = jnp.asarray(prompt)
    model.check_tokens(prompt)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
    needed = prompt.shape[1] + max_new_tokens
    cache_size = cache_size or needed
    if cache_size < needed:
        raise ValueError(f"cache_size={cache_size} is smaller than prompt + new tokens = {needed}")
    last_logits, cache = prefill(model, prompt, cache_size)
    tokens, _ = decode(model, last_logits, cache, rng, steps=max_new_tokens,
                       temperature=float(temperature), top_k=top_k)
    return tokens
