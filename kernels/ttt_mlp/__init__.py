"""The fused ttt_mlp kernels: config, reference hook, Mosaic TPU backend, api (see kernels/README.md)."""

from .api import ttt_mlp, unsupported
from .config import TTTMLPConfig

__all__ = ["TTTMLPConfig", "ttt_mlp", "unsupported"]
