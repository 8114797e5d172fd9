"""ttt_mlp through the fused kernels, with the signature of ttc_jax.ttt.dual.dual plus a config.

Registered with ttc_jax.ttt (impl="pallas", and impl="auto" on GPU/TPU); see kernels/README.md.
"""

from __future__ import annotations

from ttc_jax.ttt.learners import MLP

from ..common import fused
from ..common.config import TTTKernelConfig
from ..common.registry import register_backend
from . import gpu_backend, pallas_tpu

register_backend("ttt_mlp", pallas_tpu.BACKEND)
register_backend("ttt_mlp", gpu_backend.BACKEND)  # Mosaic GPU (Hopper); kernels/ttt_mlp/gpu_*.py

ttt_mlp = fused.make_entry("ttt_mlp")


def unsupported(q_shape, dtype, mini_batch_size: int, stats: bool, config: TTTKernelConfig | None = None):
    """Why the kernels cannot take this call here (a one-line reason), or None."""
    return fused.unsupported("ttt_mlp", MLP, q_shape, dtype, mini_batch_size, stats, config)
