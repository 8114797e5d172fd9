"""Frozen config of the ttt_linear kernels."""

from __future__ import annotations

import dataclasses

from ..common.config import TTTKernelConfig


@dataclasses.dataclass(frozen=True)
class TTTLinearConfig(TTTKernelConfig):
    """Kernel settings for ttt_linear (fields in TTTKernelConfig)."""


DEFAULT = TTTLinearConfig()
