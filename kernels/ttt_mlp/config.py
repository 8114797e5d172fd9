"""Frozen config of the ttt_mlp kernels."""

from __future__ import annotations

import dataclasses

from ..common.config import TTTKernelConfig


@dataclasses.dataclass(frozen=True)
class TTTMLPConfig(TTTKernelConfig):
    """Kernel settings for ttt_mlp (fields in TTTKernelConfig)."""


DEFAULT = TTTMLPConfig()
