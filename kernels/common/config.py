"""Frozen configuration of the fused TTT kernels (one dataclass per op derives from this)."""

from __future__ import annotations

import dataclasses

BACKENDS = ("tpu", "gpu")


@dataclasses.dataclass(frozen=True)
class TTTKernelConfig:
    """How a fused TTT kernel runs.

    backend: "tpu" (Mosaic TPU `pallas_call`), "gpu" (Mosaic GPU `plgpu.kernel`), or None to follow
        the platform (cpu runs the TPU kernels in interpret mode).
    mini_batches_per_group: mini-batches per sequential grid step and remat group (the backward
        recomputes a group from its saved boundary state); None takes the call's `remat_group`
        (0 there means 1).
    block_sequences: sequences per program of the decode kernel.
    interpret: run the kernel in the Pallas interpreter; None: only on cpu.
    detect_races: interpret with the TPU race detector (`pltpu.InterpretParams(detect_races=True)`).
    matmul_dtype: matmul operands, "float32" or "bfloat16" (accumulation is float32 either way);
        None: the backend's default (TPU: float32 at precision HIGHEST; GPU: bfloat16).
    """

    backend: str | None = None
    mini_batches_per_group: int | None = None
    block_sequences: int = 8
    interpret: bool | None = None
    detect_races: bool = False
    matmul_dtype: str | None = None

    def __post_init__(self):
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}; expected one of {BACKENDS} or None")
        g = self.mini_batches_per_group
        if g is not None and (not isinstance(g, int) or isinstance(g, bool) or g < 1):
            raise ValueError(f"mini_batches_per_group={g!r}; expected an int >= 1 or None")
        bs = self.block_sequences
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise ValueError(f"block_sequences={bs!r}; expected an int >= 1")
        if self.matmul_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"matmul_dtype={self.matmul_dtype!r}; expected 'float32', 'bfloat16' or None")
        if self.interpret not in (None, True, False):
            raise ValueError(f"interpret={self.interpret!r}; expected None, True or False")

    def group(self, remat_group: int) -> int:
        """Mini-batches per group for a call with this `remat_group`."""
        return self.mini_batches_per_group or max(int(remat_group), 1)
