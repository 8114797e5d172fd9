"""The TTT sequence-modelling layer (TTT-Linear or TTT-MLP) as an NNX module.

Projections, RoPE at positions t mod K, learnable token rates and row factors,
the inner loop from `ttc_jax.ttt`, post-norm, and (Mamba backbone) the q/k
convolutions and the output gate. See ttt-math.md §1-5.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx
from jaxtyping import Array, Float

from ttc_jax.nn.config import TTT_KINDS, TTT_NORM_EPS, ModelConfig
from ttc_jax.nn.conv import CausalConv
from ttc_jax.nn.partitioning import FAST_WEIGHT_AXES, constrain, name_axes
from ttc_jax.nn.rope import apply_rope
from ttc_jax.ttt import LEARNERS, gelu_tanh, ttt
from ttc_jax.ttt.tracing import is_traced


def init_ttt_layer_cache(cfg: ModelConfig, batch: int) -> dict:
    """Decoding state before the first token: a fresh inner state (None), zero conv windows."""
    cache = {"state": None}
    if cfg.has_qk_conv:
        window = jnp.zeros((batch, cfg.conv_width - 1, cfg.d_model), jnp.dtype(cfg.dtype))
        cache["conv_q"], cache["conv_k"] = window, window
    return cache


class TTTLayer(nnx.Module):
    """y = wo(post_norm(ttt(q, k, v)) [* gelu(wg x)]) for x [B, T, D]."""

    def __init__(self, cfg: ModelConfig, kind: str, *, rngs: nnx.Rngs):
        if kind not in TTT_KINDS:
            raise ValueError(f"TTTLayer: kind={kind!r}; expected one of {TTT_KINDS}")
        self.kind = kind
        self.qk_conv, self.gate = cfg.has_qk_conv, cfg.has_gate
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.mini_batch_size = cfg.mini_batch_size
        self.base_lr = cfg.base_lr(kind)
        self.rope_theta = cfg.rope_theta
        self.remat_group = cfg.remat_group
        self.impl = cfg.ttt_impl
        self.eps = TTT_NORM_EPS
        self.dtype = jnp.dtype(cfg.dtype)
        D, H, F, K = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mini_batch_size
        normal = nnx.initializers.normal(cfg.init_std)
        lin = dict(use_bias=False, kernel_init=normal, dtype=self.dtype, param_dtype=jnp.float32, rngs=rngs)

        self.wq = nnx.Linear(D, D, **lin)
        if self.qk_conv:
            self.conv_q = CausalConv(D, cfg.conv_width, rngs=rngs)
            self.conv_k = CausalConv(D, cfg.conv_width, rngs=rngs)
        else:
            self.wk = nnx.Linear(D, D, **lin)
        if self.gate:
            self.wg = nnx.Linear(D, D, **lin)
        self.wv = nnx.Linear(D, D, **lin)
        self.wo = nnx.Linear(D, D, **lin)

        self.learnable_token_idx = nnx.Param(jnp.zeros((K,), jnp.float32))
        self.ttt_lr_weight = nnx.Param(normal(rngs.params(), (H, D), jnp.float32))
        self.ttt_lr_bias = nnx.Param(jnp.zeros((H,), jnp.float32))
        self.ttt_norm_scale = nnx.Param(jnp.ones((H, F), jnp.float32))
        self.ttt_norm_bias = nnx.Param(jnp.zeros((H, F), jnp.float32))
        # initial fast weights W0: W1 and W2 both N(0, init_std), as in the official "Fix TTT MLP Init"
        stds = {"w1": cfg.init_std, "w2": cfg.init_std}
        self.fast_weights = nnx.Dict({
            n: nnx.Param(nnx.initializers.normal(stds[n])(rngs.params(), s, jnp.float32) if n in stds
                         else jnp.zeros(s, jnp.float32))
            for n, s in LEARNERS[kind].weight_shapes(H, F).items()})
        self.post_norm = nnx.LayerNorm(D, epsilon=TTT_NORM_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                                       rngs=rngs)
        proj_in = ("embed", "heads")
        name_axes(self, {"wq.kernel": proj_in, "wk.kernel": proj_in, "wv.kernel": proj_in, "wg.kernel": proj_in,
                         "wo.kernel": ("heads", "embed"), "learnable_token_idx": ("mini_batch",),
                         "ttt_lr_weight": ("heads", "embed"), "ttt_lr_bias": ("heads",),
                         "ttt_norm_scale": ("heads", "head_dim"), "ttt_norm_bias": ("heads", "head_dim"),
                         "post_norm.scale": ("norm",), "post_norm.bias": ("norm",),
                         **{f"fast_weights.{n}": FAST_WEIGHT_AXES[kind][n] for n in self.fast_weights}})

    def token_scale(self) -> Float[Array, " K"]:
        """Row factors s_i = max(0, 1/(i+1) + a_i)."""
        base = 1.0 / jnp.arange(1, self.mini_batch_size + 1, dtype=jnp.float32)
        return jnp.maximum(base + self.learnable_token_idx[...], 0.0)

    def token_lr(self, x: Float[Array, "B T D"]) -> Float[Array, "B H T"]:
        """Token rates base_lr * sigmoid(x . theta_h + b_h) / F (ttt-math.md §3)."""
        logits = jnp.einsum("btd,hd->bht", x.astype(jnp.float32), self.ttt_lr_weight[...])
        return self.base_lr * jax.nn.sigmoid(logits + self.ttt_lr_bias[...][None, :, None]) / self.head_dim

    def _state_with_static_pos(self, state, pos):
        """A carried state whose position is known when `pos` is (keeps the fast path under a layer scan)."""
        if state is None or is_traced(pos):
            return state
        return dataclasses.replace(state, pos=int(pos) % self.mini_batch_size)

    def __call__(self, x: Float[Array, "B T D"], *, cache: dict | None = None, pos=0,
                 return_stats: bool = False, lr_mult=1.0):
        """Returns (y [B, T, D], new cache or None[, stats]). `lr_mult` scales eta (the inner base-lr warmup)."""
        D = self.n_heads * self.head_dim
        if x.ndim != 3 or x.shape[-1] != D:
            raise ValueError(f"TTTLayer: x has shape {tuple(x.shape)}; expected [B, T, D={D}]")
        B, T, _ = x.shape
        H, F, K = self.n_heads, self.head_dim, self.mini_batch_size
        x = x.astype(self.dtype)
        cache = cache if cache is not None else {}
        new_cache = {}
        if self.qk_conv:
            xqk = self.wq(x)
            q, new_cache["conv_q"] = self.conv_q(xqk, cache.get("conv_q"))
            k, new_cache["conv_k"] = self.conv_k(xqk, cache.get("conv_k"))
        else:
            q, k = self.wq(x), self.wk(x)
        v = self.wv(x)
        positions = (jnp.asarray(pos, jnp.int32) + jnp.arange(T, dtype=jnp.int32)) % K
        split = lambda a: a.reshape(B, T, H, F)
        q = apply_rope(split(q), positions, self.rope_theta)
        k = apply_rope(split(k), positions, self.rope_theta)
        q, k, v = (constrain(rearrange(a, "b t h f -> b h t f"), "activation_batch", "activation_heads",
                             "activation_length", None) for a in (q, k, split(v)))

        lr = self.token_lr(x)
        if not (isinstance(lr_mult, (int, float)) and lr_mult == 1.0):
            lr = lr * jnp.asarray(lr_mult, jnp.float32)

        out = ttt(self.kind, q, k, v, lr, self.token_scale(),
                  {n: p[...] for n, p in self.fast_weights.items()},
                  self.ttt_norm_scale[...], self.ttt_norm_bias[...],
                  mini_batch_size=K, state=self._state_with_static_pos(cache.get("state"), pos), impl=self.impl,
                  remat_group=self.remat_group, return_stats=return_stats, eps=self.eps)
        z, new_cache["state"] = out[0], out[1]
        o = self.post_norm(rearrange(z, "b h t f -> b t (h f)"))
        if self.gate:
            o = gelu_tanh(self.wg(x)) * o
        y = self.wo(o.astype(self.dtype))
        return (y, new_cache, out[2]) if return_stats else (y, new_cache)
