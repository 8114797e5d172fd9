"""Token sampling from logits: pure functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def sample_token(logits: Float[Array, "B V"], rng: jax.Array, *, temperature: float = 1.0,
                 top_k: int | None = None) -> Int[Array, " B"]:
    """Greedy when temperature == 0, else softmax(logits / temperature) sampling, optionally top-k."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature}; expected >= 0")
    if top_k is not None and not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k={top_k}; expected 1 <= top_k <= vocabulary size {logits.shape[-1]}")
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
