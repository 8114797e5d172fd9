"""The carried state of a TTT inner loop."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ttc_jax.ttt.tracing import is_traced


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TTTState:
    """Per-example fast weights at the start of the current mini-batch.

    weights: {"w1": [B, H, ...], "b1": ...}, committed at mini-batch ends.
    acc:     same shapes: sum of lr_j * grad_j over the tokens of the current,
             unfinished mini-batch (zeros when pos == 0).
    pos:     tokens already seen in the current mini-batch (0..K-1): an int32
             scalar array, or a Python int when the caller knows it statically
             (arrays created inside `jit` are traced, so a known position keeps
             the mini-batch fast path there).
    """

    weights: dict[str, jax.Array]
    acc: dict[str, jax.Array]
    pos: jax.Array | int

    @property
    def batch_size(self) -> int:
        return next(iter(self.weights.values())).shape[0]

    def current_weights(self, token_scale: jax.Array) -> dict[str, jax.Array]:
        """Weights after the last seen token (what its output used)."""
        s = token_scale[jnp.maximum(self.pos - 1, 0)]
        return {n: w - s * self.acc[n] for n, w in self.weights.items()}


def init_state(weights: dict[str, jax.Array], batch_size: int, dtype=jnp.float32) -> TTTState:
    """A fresh state: the shared initial weights broadcast over the batch, at the static position 0."""
    bw = {n: jnp.broadcast_to(w.astype(dtype), (batch_size, *w.shape)) for n, w in weights.items()}
    return TTTState(weights=bw, acc=jax.tree.map(jnp.zeros_like, bw), pos=0)


def static_pos(state: TTTState) -> int | None:
    """The state's position as a Python int, or None when it is traced."""
    if is_traced(state.pos):
        return None
    return int(state.pos)

