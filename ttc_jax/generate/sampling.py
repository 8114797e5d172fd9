"""Token sampling from logits: pure functions.

Order of the rules (as in vLLM): temperature, then top-k, then top-p (nucleus,
on the distribution left by top-k), then min-p (relative to the most likely
token). Temperature 0 is greedy (argmax) and ignores the other rules.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Validated, hashable sampling rules (static under jit)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sampling_params(vocab_size: int, temperature=1.0, top_k=None, top_p=None, min_p=None) -> SamplingParams:
    """SamplingParams from user arguments; a ValueError naming the argument on bad input."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature={temperature!r}; expected a number >= 0 (0 is greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k={top_k!r}; expected None or an int with 1 <= top_k <= vocabulary size {vocab_size}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r}; expected None or a number in (0, 1]")
    if min_p is not None and (isinstance(min_p, bool) or not isinstance(min_p, numbers.Real) or not 0 <= min_p <= 1):
        raise ValueError(f"min_p={min_p!r}; expected None or a number in [0, 1]")
    return SamplingParams(float(temperature), None if top_k is None else int(top_k),
                          None if top_p is None else float(top_p), None if min_p is None else float(min_p))


@functools.partial(jax.jit, static_argnames=("params",))
def filter_logits(logits: Float[Array, "... V"], params: SamplingParams) -> Float[Array, "... V"]:
    """Logits / temperature with the tokens removed by top-k, top-p and min-p set to -inf."""
    x = logits.astype(jnp.float32) / params.temperature
    if params.top_k is not None:
        kth = jax.lax.top_k(x, params.top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if params.top_p is not None and params.top_p < 1:
        desc = -jnp.sort(-x, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # the smallest set of most likely tokens whose mass reaches top_p (the first token always stays)
        keep = mass_before < params.top_p
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < threshold, -jnp.inf, x)
    if params.min_p is not None and params.min_p > 0:
        top = jnp.max(x, axis=-1, keepdims=True)
        x = jnp.where(x < top + jnp.log(params.min_p), -jnp.inf, x)
    return x


@functools.partial(jax.jit, static_argnames=("params",))
def sample_rows(logits: Float[Array, "B V"], keys: jax.Array, params: SamplingParams) -> Int[Array, " B"]:
    """One token per row, row b drawn with its own key keys[b] (so a row's draw does not depend on the batch)."""
    if params.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, params)
    return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, x).astype(jnp.int32)


def sample_token(logits: Float[Array, "B V"], rng: jax.Array, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None) -> Int[Array, " B"]:
    """Greedy when temperature == 0, else a draw from softmax(filtered logits / temperature), one key per batch."""
    params = sampling_params(logits.shape[-1], temperature, top_k, top_p, min_p)
    if params.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits, params), axis=-1).astype(jnp.int32)
