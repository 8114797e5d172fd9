"""SwiGLU feed-forward network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ttc_jax.nn.partitioning import constrain, name_axes


class SwiGLU(nnx.Module):
    """y = w2(silu(w1(x)) * w3(x)); Linear kernels are [in, out], no biases."""

    def __init__(self, d_model: int, ffn_dim: int, *, init_std: float = 0.02, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        init = nnx.initializers.normal(init_std)
        kw = dict(use_bias=False, kernel_init=init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.w1 = nnx.Linear(d_model, ffn_dim, **kw)
        self.w3 = nnx.Linear(d_model, ffn_dim, **kw)
        self.w2 = nnx.Linear(ffn_dim, d_model, **kw)
        name_axes(self, {"w1.kernel": ("embed", "mlp"), "w3.kernel": ("embed", "mlp"),
                         "w2.kernel": ("mlp", "embed")})

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        hidden = jax.nn.silu(self.w1(x)) * self.w3(x)
        if hidden.ndim == 3:
            hidden = constrain(hidden, "activation_batch", "activation_length", "activation_mlp")
        return self.w2(hidden)
