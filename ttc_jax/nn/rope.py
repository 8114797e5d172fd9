"""Rotary position embedding (RoPE) with interleaved pairs.

Convention of the published ttt-lm-jax code: lanes 2i and 2i+1 form the complex
number x[2i] + 1j * x[2i+1], which is multiplied by exp(1j * pos * theta^(-2i/F)),
and the real and imaginary parts are written back to lanes 2i and 2i+1.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rope_frequencies(head_dim: int, theta: float = 1e4) -> Float[Array, "half"]:
    """Angular frequencies theta^(-2i/F), i = 0..F/2-1, float32 [F/2]."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rope_frequencies: head_dim must be a positive even int, got {head_dim!r}")
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (theta ** exponents)


def apply_rope(x: Float[Array, "b t h f"], positions: Int[Array, "t"] | Int[Array, "b t"],
               theta: float = 1e4) -> Float[Array, "b t h f"]:
    """Rotate x [B, T, H, F] at positions [T] or [B, T]; computed in float32, returns x.dtype."""
    if x.ndim != 4:
        raise ValueError(f"apply_rope: x must have rank 4 [B, T, H, F], got shape {tuple(x.shape)}")
    B, T, H, F = x.shape
    if F % 2:
        raise ValueError(f"apply_rope: head width F={F} of x (shape {tuple(x.shape)}) must be even")
    positions = jnp.asarray(positions)
    if positions.shape not in ((T,), (B, T)):
        raise ValueError(
            f"apply_rope: positions must have shape ({T},) or ({B}, {T}), got {tuple(positions.shape)}")
    angles = positions.astype(jnp.float32)[..., None] * rope_frequencies(F, theta)  # [(B,) T, F/2]
    angles = angles[..., None, :]  # [(B,) T, 1, F/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    re, im = xf[..., 0::2], xf[..., 1::2]
    out_re = re * cos - im * sin
    out_im = re * sin + im * cos
    return jnp.stack([out_re, out_im], axis=-1).reshape(x.shape).astype(x.dtype)
