"""Functional core of TTT layers: pure JAX, no Flax.

`ttt_linear` / `ttt_mlp` run the inner loop over a sequence (dual form as a
`lax.scan`, or the primal reference), carrying a `TTTState` that continues
exactly across calls.
"""

from ttc_jax.ttt.api import IMPLS, register_pallas_kernel, ttt, ttt_linear, ttt_mlp
from ttc_jax.ttt.learners import LEARNERS, LINEAR, MLP, Learner, gelu_tanh, layer_norm
from ttc_jax.ttt.state import TTTState, init_state

__all__ = [
    "IMPLS", "LEARNERS", "LINEAR", "MLP", "Learner", "TTTState", "gelu_tanh", "init_state",
    "layer_norm", "register_pallas_kernel", "ttt", "ttt_linear", "ttt_mlp",
]
