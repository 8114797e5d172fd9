"""Causal multi-head self-attention with RoPE, optional sliding window and a KV cache.

The cache is a plain (non-rolling) buffer: it stores keys/values for absolute
positions 0..S-1, and a call at position `pos` with T tokens writes slots
pos..pos+T-1. A sliding window only masks keys, it does not shrink the cache,
so the cache size must cover the whole sequence (prompt plus generated tokens).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Float, Int

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.partitioning import constrain, name_axes
from ttc_jax.nn.rope import apply_rope
from ttc_jax.ttt.tracing import is_traced


@struct.dataclass
class KVCache:
    """Keys and values of all positions written so far: k, v [B, S, H, F] (S = cache size)."""

    k: Float[Array, "b s h f"]
    v: Float[Array, "b s h f"]

    @property
    def size(self) -> int:
        return self.k.shape[1]


def init_kv_cache(batch: int, size: int, n_heads: int, head_dim: int, dtype=jnp.float32) -> KVCache:
    """An all-zero cache for `size` positions."""
    shape = (batch, size, n_heads, head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def attention_mask(q_pos: Int[Array, "t"], k_pos: Int[Array, "s"], window: int | None) -> jax.Array:
    """Boolean [T, S]: key j visible from query i iff k_pos[j] <= q_pos[i] (and q_pos - k_pos < window)."""
    diff = q_pos[:, None] - k_pos[None, :]
    mask = diff >= 0
    if window is not None:
        mask &= diff < window
    return mask


def attend(q: Float[Array, "b t h f"], k: Float[Array, "b s h f"], v: Float[Array, "b s h f"],
           mask: jax.Array) -> Float[Array, "b t h f"]:
    """Softmax attention of q over k, v under a boolean [T, S] mask, in float32 (scale 1/sqrt(F))."""
    logits = jnp.einsum("bthf,bshf->bhts", q.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits / math.sqrt(q.shape[-1])
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhts,bshf->bthf", probs, v.astype(jnp.float32))


def blocked_causal_attention(q: Float[Array, "b t h f"], k: Float[Array, "b t h f"], v: Float[Array, "b t h f"],
                             pos: Int[Array, "t"], window: int | None, block: int) -> Float[Array, "b t h f"]:
    """Causal self-attention in query blocks of `block` rows, each over only the keys it can see.

    Equal to `attend` with the full causal mask; skips the masked upper triangle (and keys outside a
    sliding window), about half the work and memory of the dense T x T form for long T.
    """
    T = q.shape[1]
    if not block or T <= block:
        return attend(q, k, v, attention_mask(pos, pos, window))
    outs = []
    for start in range(0, T, block):
        end = min(T, start + block)
        first = 0 if window is None else max(0, start - window + 1)
        mask = attention_mask(pos[start:end], pos[first:end], window)
        outs.append(attend(q[:, start:end], k[:, first:end], v[:, first:end], mask))
    return jnp.concatenate(outs, axis=1)


class Attention(nnx.Module):
    """Multi-head causal softmax attention (RoPE on q, k; scale 1/sqrt(F); softmax in float32)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.d_model = cfg.d_model
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.rope_theta = cfg.rope_theta
        self.sliding_window = cfg.sliding_window
        self.block_size = cfg.attn_block_size
        self.dtype = jnp.dtype(cfg.dtype)
        kw = dict(use_bias=False, kernel_init=nnx.initializers.normal(cfg.init_std),
                  dtype=self.dtype, param_dtype=jnp.float32, rngs=rngs)
        D = cfg.d_model
        self.wq = nnx.Linear(D, D, **kw)
        self.wk = nnx.Linear(D, D, **kw)
        self.wv = nnx.Linear(D, D, **kw)
        self.wo = nnx.Linear(D, D, **kw)
        name_axes(self, {"wq.kernel": ("embed", "heads"), "wk.kernel": ("embed", "heads"),
                         "wv.kernel": ("embed", "heads"), "wo.kernel": ("heads", "embed")})

    def __call__(self, x: Float[Array, "b t d"], *, cache: KVCache | None = None,
                 pos: int | Int[Array, ""] = 0) -> tuple[Float[Array, "b t d"], KVCache | None]:
        """Attend x [B, T, D] at absolute positions pos..pos+T-1.

        Without a cache: causal attention within x, returns (y, None). With a
        cache: writes the new k/v at slots pos..pos+T-1 (pos may be traced) and
        attends over the whole cache with masks from positions; returns (y, cache).
        """
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Attention: x must have shape [B, T, D={self.d_model}], got {tuple(x.shape)}")
        B, T, _ = x.shape
        H, F = self.n_heads, self.head_dim
        if jnp.ndim(pos) != 0:
            raise ValueError(f"Attention: pos must be a scalar, got shape {jnp.shape(pos)}")
        pos = jnp.asarray(pos, jnp.int32)
        x = x.astype(self.dtype)
        q_pos = pos + jnp.arange(T, dtype=jnp.int32)

        q = apply_rope(self.wq(x).reshape(B, T, H, F), q_pos, self.rope_theta)
        k = apply_rope(self.wk(x).reshape(B, T, H, F), q_pos, self.rope_theta)
        v = self.wv(x).reshape(B, T, H, F)
        q, k, v = (constrain(a, "activation_batch", "activation_length", "activation_heads", None)
                   for a in (q, k, v))

        if cache is None:
            out = blocked_causal_attention(q, k, v, q_pos, self.sliding_window, self.block_size)
        else:
            self._check_cache(cache, B, T, pos)
            zero = jnp.zeros((), jnp.int32)
            start = (zero, pos, zero, zero)
            cache = KVCache(k=jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start),
                            v=jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start))
            k_pos = jnp.arange(cache.size, dtype=jnp.int32)
            out = attend(q, cache.k, cache.v, attention_mask(q_pos, k_pos, self.sliding_window))
        y = self.wo(out.reshape(B, T, H * F).astype(self.dtype))
        return y, cache

    def _check_cache(self, cache: KVCache, B: int, T: int, pos) -> None:
        expected = (B, cache.size, self.n_heads, self.head_dim)
        for name, arr in (("cache.k", cache.k), ("cache.v", cache.v)):
            if arr.shape != expected:
                raise ValueError(f"Attention: {name} must have shape [B={B}, S, H={self.n_heads}, "
                                 f"F={self.head_dim}], got {tuple(arr.shape)}")
        if not is_traced(pos):
            p = int(pos)
            if p < 0 or p + T > cache.size:
                raise ValueError(f"Attention: pos={p} with T={T} new tokens needs slots {p}..{p + T - 1}, "
                                 f"outside the KV cache of size {cache.size}")
