"""Whether a value is known at trace time (one place for the JAX API that tells)."""

from __future__ import annotations

import jax

try:
    _Tracer = jax.core.Tracer
except AttributeError:  # pragma: no cover - future JAX without jax.core.Tracer
    from jax._src.core import Tracer as _Tracer


def is_traced(x) -> bool:
    """True for an abstract value inside jit/scan/grad, False for a concrete array or Python number."""
    return isinstance(x, _Tracer)
