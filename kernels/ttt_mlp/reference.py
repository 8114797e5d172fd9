"""Reference hooks for ttt_mlp: the XLA dual-form scan (the fallback) and the primal definition."""

from __future__ import annotations

import functools

from ttc_jax.ttt.dual import dual
from ttc_jax.ttt.learners import MLP
from ttc_jax.ttt.reference import primal

xla = functools.partial(dual, MLP)  # (q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps, *, remat_group, stats)
reference = functools.partial(primal, MLP)  # (q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps)
