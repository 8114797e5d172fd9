"""Pallas kernels for ttc-jax, installed as the subpackage ``ttc_jax.kernels``.

One folder per op (``ttt_linear/``, ``ttt_mlp/``: config, reference hook, backends, api), shared
pieces in ``common/``. Importing this package registers the kernels with ``ttc_jax.ttt`` so that
``ttt_linear(..., impl="pallas")`` (and ``impl="auto"`` on GPU/TPU) use them; the XLA scan in
``ttc_jax.ttt`` stays the reference and the fallback. See kernels/README.md.
"""

from ttc_jax.ttt.api import register_pallas_kernel

from .common.config import TTTKernelConfig
from .common.registry import KernelBackend, KernelSpec, register_backend
from . import ttt_linear, ttt_mlp
from .ttt_linear import TTTLinearConfig
from .ttt_mlp import TTTMLPConfig

register_pallas_kernel("ttt_linear", ttt_linear.api.ttt_linear, ttt_linear.unsupported)
register_pallas_kernel("ttt_mlp", ttt_mlp.api.ttt_mlp, ttt_mlp.unsupported)

__all__ = ["KernelBackend", "KernelSpec", "TTTKernelConfig", "TTTLinearConfig", "TTTMLPConfig",
           "register_backend"]
