"""Depthwise causal 1-D convolution over time with a carried window for decoding."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ttc_jax.nn.partitioning import name_axes


class CausalConv(nnx.Module):
    """Depthwise causal convolution: y_t = bias + sum_w kernel[w] * x_{t-(width-1)+w}.

    Cross-correlation as in flax `nn.Conv(padding="CAUSAL", feature_group_count=C)`
    (the published kernel (width, 1, C) squeezed to (width, C)); kernel[0] is the
    oldest tap and kernel[width-1] multiplies the current input. `window` holds the
    previous width-1 inputs (zeros at sequence start), so calls on consecutive
    chunks equal one call on the whole sequence.
    """

    def __init__(self, channels: int, width: int = 4, *, kernel_init=nnx.initializers.lecun_normal(),
                 rngs: nnx.Rngs):
        if width < 1 or channels < 1:
            raise ValueError(f"CausalConv: channels and width must be >= 1, got channels={channels}, width={width}")
        self.channels = channels
        self.width = width
        # lecun_normal on [width, channels] has fan_in = width, as flax's depthwise nn.Conv
        self.kernel = nnx.Param(kernel_init(rngs.params(), (width, channels), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        name_axes(self, {"kernel": ("conv_width", "conv_channels"), "bias": ("conv_channels",)})

    def init_window(self, batch: int, dtype=jnp.float32) -> Float[Array, "b w1 c"]:
        """Zero window [batch, width-1, channels] for the start of a sequence."""
        return jnp.zeros((batch, self.width - 1, self.channels), dtype)

    def __call__(self, x: Float[Array, "b t c"], window: Float[Array, "b w1 c"] | None = None
                 ) -> tuple[Float[Array, "b t c"], Float[Array, "b w1 c"]]:
        """Returns (y [B, T, C] in x.dtype, new_window [B, width-1, C]: the last width-1 inputs)."""
        if x.ndim != 3 or x.shape[-1] != self.channels:
            raise ValueError(
                f"CausalConv: x must have shape [B, T, C={self.channels}], got {tuple(x.shape)}")
        B, T, C = x.shape
        if window is None:
            window = self.init_window(B, x.dtype)
        elif window.shape != (B, self.width - 1, C):
            raise ValueError(f"CausalConv: window must have shape {(B, self.width - 1, C)}, "
                             f"got {tuple(window.shape)}")
        xp = jnp.concatenate([window.astype(x.dtype), x], axis=1)  # [B, width-1+T, C]
        kernel = self.kernel[...].astype(x.dtype)
        y = self.bias[...].astype(x.dtype) + sum(kernel[w] * xp[:, w:w + T] for w in range(self.width))
        new_window = xp[:, xp.shape[1] - (self.width - 1):]
        return y.astype(x.dtype), new_window
