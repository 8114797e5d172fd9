"""LoRA adapters as pure functions on flat parameter dicts: W + (alpha / r) A @ B on chosen kernels.

A kernel [..., in, out] (leading axes: stacked layer groups) gets A [..., in, r] ~ N(0, 1/in) and
B [..., r, out] = 0, so the adapted model starts equal to the base model. Merging the delta into the
kernel computes x (W + s A B) = x W + s (x A) B, the adapter's output, without touching the model code.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp


def init_lora(key, flat: Mapping[tuple, jax.Array], paths: Sequence[tuple], rank: int) -> dict:
    """{path: {"a": A, "b": B}} for each kernel path."""
    out = {}
    for i, p in enumerate(sorted(paths, key=str)):
        w = flat[p]
        *lead, d_in, d_out = w.shape
        a = jax.random.normal(jax.random.fold_in(key, i), (*lead, d_in, rank), w.dtype) / jnp.sqrt(d_in)
        out[p] = {"a": a, "b": jnp.zeros((*lead, rank, d_out), w.dtype)}
    return out


def merge_lora(flat: Mapping[tuple, jax.Array], lora: Mapping[tuple, dict], scale: float) -> dict:
    """`flat` with every adapted kernel replaced by W + scale * A @ B."""
    out = dict(flat)
    for p, ab in lora.items():
        out[p] = flat[p] + scale * jnp.matmul(ab["a"], ab["b"])
    return out
