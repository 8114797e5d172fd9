"""The fused ttt_linear kernels: config, reference hook, Mosaic TPU backend, api (see kernels/README.md)."""

from .api import ttt_linear, unsupported
from .config import TTTLinearConfig

__all__ = ["TTTLinearConfig", "ttt_linear", "unsupported"]
