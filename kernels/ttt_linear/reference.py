"""Reference hooks for ttt_linear: the XLA dual-form scan (the fallback) and the primal definition."""

from __future__ import annotations

import functools

from ttc_jax.ttt.dual import dual
from ttc_jax.ttt.learners import LINEAR
from ttc_jax.ttt.reference import primal

xla = functools.partial(dual, LINEAR)  # (q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps, *, remat_group, stats)
reference = functools.partial(primal, LINEAR)  # (q, k, v, lr, token_scale, state, ln_scale, ln_bias, eps)
