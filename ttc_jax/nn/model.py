"""Blocks and the hybrid TTT / attention language model.

Layers repeat `cfg.layer_pattern`; with `cfg.scan_layers` one period of the
pattern is a `LayerGroup` whose parameters are stacked over the repeats and
applied with `lax.scan`, so compile time does not grow with depth.

Decoding: `init_cache` gives the state before the first token (KV caches,
TTT inner states, convolution windows, the position). Calling the model with
a cache on T >= 1 tokens returns the logits and the advanced cache; prefill
and one-token steps are the same call.
"""

from __future__ import annotations

import numbers
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from ttc_jax.nn.attention import Attention, init_kv_cache
from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.conv import CausalConv
from ttc_jax.nn.mlp import SwiGLU
from ttc_jax.nn.partitioning import constrain, name_axes
from ttc_jax.nn.ttt_layer import TTTLayer, init_ttt_layer_cache
from ttc_jax.ttt.tracing import is_traced


def _check_dtype_available(cfg: ModelConfig) -> None:
    """float64 needs 64-bit JAX; without it JAX would silently compute in float32."""
    if jnp.dtype(cfg.dtype) == jnp.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError("ModelConfig.dtype='float64' needs 64-bit JAX; enable it with "
                         "jax.config.update('jax_enable_x64', True) or use dtype='float32'")


class PreConv(nnx.Module):
    """Mamba-backbone block input mixing: RMSNorm then depthwise causal conv."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.conv_norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                                     param_dtype=jnp.float32, rngs=rngs)
        self.conv1 = CausalConv(cfg.d_model, cfg.conv_width, rngs=rngs)
        name_axes(self, {"conv_norm.scale": ("norm",)})

    def __call__(self, h, window=None):
        return self.conv1(self.conv_norm(h), window)


def init_block_cache(cfg: ModelConfig, kind: str, batch: int, size: int) -> dict:
    """Decoding state of one block before the first token."""
    dtype = jnp.dtype(cfg.dtype)
    if kind == "attention":
        return {"seq": init_kv_cache(batch, size, cfg.n_heads, cfg.head_dim, dtype)}
    cache = {"seq": init_ttt_layer_cache(cfg, batch)}
    if cfg.has_pre_conv:
        cache["conv"] = jnp.zeros((batch, cfg.conv_width - 1, cfg.d_model), dtype)
    return cache


class Block(nnx.Module):
    """Pre-norm residual block: [h += PreConv(h)]; h += Seq(norm h); h += SwiGLU(norm h)."""

    def __init__(self, cfg: ModelConfig, kind: str, *, rngs: nnx.Rngs):
        self.kind = kind
        self.dtype = jnp.dtype(cfg.dtype)
        norm = lambda: nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=self.dtype,
                                   param_dtype=jnp.float32, rngs=rngs)
        self.has_conv = kind != "attention" and cfg.has_pre_conv
        if self.has_conv:
            self.conv = PreConv(cfg, rngs=rngs)
        self.seq_norm = norm()
        if kind == "attention":
            self.seq_modeling_block = Attention(cfg, rngs=rngs)
        else:
            self.seq_modeling_block = TTTLayer(cfg, kind, rngs=rngs)
        self.ffn_norm = norm()
        self.feed_forward = SwiGLU(cfg.d_model, cfg.ffn_dim, init_std=cfg.init_std, dtype=self.dtype, rngs=rngs)
        name_axes(self, {"seq_norm.scale": ("norm",), "ffn_norm.scale": ("norm",)})

    def __call__(self, h, cache: dict | None, pos, return_stats: bool = False, ttt_lr_mult=1.0):
        """(h, new cache or None, inner-loss stats of a TTT layer or None)."""
        new_cache = {} if cache is not None else None
        if self.has_conv:
            c, window = self.conv(h, None if cache is None else cache["conv"])
            h = h + c
            if cache is not None:
                new_cache["conv"] = window
        seq_cache = None if cache is None else cache["seq"]
        stats = None
        if return_stats and self.kind != "attention":
            y, seq_cache, stats = self.seq_modeling_block(self.seq_norm(h), cache=seq_cache, pos=pos,
                                                          return_stats=True, lr_mult=ttt_lr_mult)
        elif self.kind != "attention":
            y, seq_cache = self.seq_modeling_block(self.seq_norm(h), cache=seq_cache, pos=pos, lr_mult=ttt_lr_mult)
        else:
            y, seq_cache = self.seq_modeling_block(self.seq_norm(h), cache=seq_cache, pos=pos)
        h = h + y
        if cache is not None:
            new_cache["seq"] = seq_cache
        h = h + self.feed_forward(self.ffn_norm(h))
        return h.astype(self.dtype), new_cache, stats


class LayerGroup(nnx.Module):
    """Consecutive blocks of the given kinds, applied in order."""

    def __init__(self, cfg: ModelConfig, kinds: tuple[str, ...], *, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(cfg, kind, rngs=rngs) for kind in kinds])

    def __call__(self, h, caches: tuple | None, pos, return_stats: bool = False, ttt_lr_mult=1.0):
        new, stats = [], []
        for i, block in enumerate(self.blocks):
            h, c, st = block(h, None if caches is None else caches[i], pos, return_stats, ttt_lr_mult)
            new.append(c)
            stats.append(st)
        return h, (tuple(new) if caches is not None else None), tuple(stats)


class HybridLM(nnx.Module):
    """Decoder-only LM mixing TTT-Linear, TTT-MLP and attention layers; tied embeddings unless
    `cfg.tie_word_embeddings` is False (then `lm_head` [D, V])."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        _check_dtype_available(cfg)
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(cfg.init_std),
                               param_dtype=jnp.float32, rngs=rngs)
        period = cfg.scan_period if cfg.scan_layers else None
        self.n_groups = cfg.n_layers // period if period else None
        if period:
            @nnx.split_rngs(splits=self.n_groups)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make(rngs):
                return LayerGroup(cfg, cfg.layer_pattern, rngs=rngs)
            self.layers = make(rngs)
            # n_layers not a multiple of the pattern: the last n_layers % period layers run unscanned
            rest = cfg.layer_kinds[self.n_groups * period:]
            self.layers_rest = LayerGroup(cfg, rest, rngs=rngs) if rest else None
        else:
            self.layers = LayerGroup(cfg, cfg.layer_kinds, rngs=rngs)
        self.ln_f = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, param_dtype=jnp.float32, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                                      kernel_init=nnx.initializers.normal(cfg.init_std),
                                      param_dtype=jnp.float32, rngs=rngs)
        name_axes(self, {"embed.embedding": ("vocab", "embed"), "ln_f.scale": ("norm",),
                         "lm_head.kernel": ("embed", "vocab")})

    # -- decoding state --------------------------------------------------------

    def init_cache(self, batch_size: int, cache_size: int | None = None) -> dict:
        """State before the first token, for up to `cache_size` positions (attention KV caches)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected an int >= 1")
        batch_size = int(batch_size)
        size = cache_size or self.cfg.max_seq_len
        if self.n_groups:
            one = tuple(init_block_cache(self.cfg, k, batch_size, size) for k in self.cfg.layer_pattern)
            layers = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.n_groups, *a.shape)), one)
            if self.layers_rest is not None:
                rest = self.cfg.layer_kinds[self.n_groups * len(self.cfg.layer_pattern):]
                layers = {"groups": layers, "rest": tuple(init_block_cache(self.cfg, k, batch_size, size)
                                                          for k in rest)}
        else:
            layers = tuple(init_block_cache(self.cfg, k, batch_size, size) for k in self.cfg.layer_kinds)
        return {"pos": jnp.zeros((), jnp.int32), "layers": layers}

    # -- forward ---------------------------------------------------------------

    def __call__(self, tokens: Int[Array, "B T"], *, cache: dict | None = None,
                 return_ttt_stats: bool = False, ttt_lr_mult=1.0, return_hidden: bool = False):
        """Logits [B, T, V] (float32), then the advanced cache if one was given, then the
        inner-loss stats if asked: {layer index: stats of `ttc_jax.ttt.ttt_linear`} for TTT layers.
        `ttt_lr_mult` (scalar) multiplies every TTT layer's eta: the official inner base-lr warmup."""
        self.check_tokens(tokens)
        _check_dtype_available(self.cfg)
        if cache is not None and not (isinstance(cache, Mapping) and "pos" in cache and "layers" in cache):
            got = sorted(cache) if isinstance(cache, Mapping) else type(cache).__name__
            raise ValueError(f"cache has keys {got}; expected the dict from init_cache (keys 'pos' and 'layers')")
        cfg = self.cfg
        pos = 0 if cache is None else cache["pos"]
        h = self.embed(tokens).astype(jnp.dtype(cfg.dtype))
        h = constrain(h, "activation_batch", "activation_length", "activation_embed")
        layer_cache = None if cache is None else cache["layers"]
        if self.n_groups:
            rest_cache = None
            if self.layers_rest is not None and layer_cache is not None:
                layer_cache, rest_cache = layer_cache["groups"], layer_cache["rest"]
            graphdef, params = nnx.split(self.layers)

            def body(h, xs):
                p, c = xs
                h, c, st = nnx.merge(graphdef, p)(h, c, pos, return_ttt_stats, ttt_lr_mult)
                return h, (c, st)

            if cfg.remat_layers:
                body = jax.checkpoint(body, prevent_cse=False)
            h, (new_layers, group_stats) = jax.lax.scan(body, h, (params, layer_cache))
            period = len(cfg.layer_pattern)
            stats = {g * period + j: jax.tree.map(lambda a: a[g], st)
                     for j, st in enumerate(group_stats) if st is not None for g in range(self.n_groups)}
            if self.layers_rest is not None:
                h, rest_new, rest_stats = self.layers_rest(h, rest_cache, pos, return_ttt_stats, ttt_lr_mult)
                start = self.n_groups * period
                stats.update({start + j: st for j, st in enumerate(rest_stats) if st is not None})
                if cache is not None:
                    new_layers = {"groups": new_layers, "rest": rest_new}
        else:
            h, new_layers, layer_stats = self.layers(h, layer_cache, pos, return_ttt_stats, ttt_lr_mult)
            stats = {i: st for i, st in enumerate(layer_stats) if st is not None}
        h = self.ln_f(h).astype(jnp.float32)
        logits = self.embed.attend(h) if cfg.tie_word_embeddings else self.lm_head(h)
        logits = constrain(logits, "activation_batch", "activation_length", "activation_vocab")
        out = (logits,)
        if cache is not None:
            out += ({"pos": cache["pos"] + tokens.shape[1], "layers": new_layers},)
        if return_ttt_stats:
            out += (dict(sorted(stats.items())),)
        if return_hidden:  # the final normed hidden states [B, T, D] (float32), e.g. for a value head
            out += (h,)
        return out[0] if len(out) == 1 else out

    def check_tokens(self, tokens) -> None:
        """Raise ValueError unless tokens is an integer [B, T] array of in-vocabulary ids (ids checked when concrete)."""
        if getattr(tokens, "ndim", None) != 2:
            raise ValueError(f"tokens has shape {tuple(getattr(tokens, 'shape', ()))}; expected [B, T]")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens has dtype {tokens.dtype}; expected an integer dtype")
        if tokens.shape[0] == 0:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)} with B=0 rows; expected a batch of B >= 1")
        if tokens.shape[1] == 0:
            raise ValueError("tokens has T=0 tokens; expected T >= 1")
        if not is_traced(tokens):
            t = np.asarray(tokens)
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"tokens contains id {bad} outside the vocabulary [0, {self.cfg.vocab_size})")
