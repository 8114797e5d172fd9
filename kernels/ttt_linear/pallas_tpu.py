"""Mosaic TPU backend of ttt_linear: forward, backward (vjp) and decode kernels (shared bodies in common/)."""

from __future__ import annotations

from ..common import tpu_backward, tpu_decode, tpu_forward
from ..common.registry import KernelBackend

MAX_F = 256  # the weights, the backward's per-mini-batch stash and the dual-form tiles fit VMEM


def unsupported(learner, F: int, K: int) -> str | None:
    if F % 8 or F > MAX_F:
        return f"head width F={F}: the TPU ttt_linear kernel takes F a multiple of 8 up to {MAX_F}; use impl='xla'"
    if K % 8 or K > 128:
        return f"mini_batch_size={K}: the TPU ttt_linear kernel takes a multiple of 8 up to 128; use impl='xla'"
    return None


BACKEND = KernelBackend(name="tpu", forward=tpu_forward.forward, backward=tpu_backward.backward,
                        decode=tpu_decode.decode, unsupported=unsupported, platforms=("tpu",))
