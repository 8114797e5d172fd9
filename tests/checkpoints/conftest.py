"""Shared helpers for the checkpoint tests: golden folders, random models, our own foreign-format writers.

The writers here spell out the published layouts independently of ttc_jax.checkpoints.names, so a
wrong entry in the converters' table cannot be mirrored by the test fixture.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn import HybridLM

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "golden"
BLOCKS = ("ttt_linear", "ttt_mlp", "ttt_linear_base", "ttt_mlp_base")


def golden_dir(fmt: str, block: str) -> Path:
    d = GOLDEN / fmt / block
    if not d.is_dir():
        pytest.fail(f"golden folder {d} is missing (CI must have shared/ beside the clone)")
    return d


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_arrays(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    """Random float32 arrays (never zeros): norms around 1, everything else N(0, 0.3)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith(("norm_weight", "norm.weight", "scale")) or "norm/" in k or "_norm/kernel" in k:
            out[k] = (1.0 + 0.1 * rng.standard_normal(s)).astype(np.float32)
        else:
            out[k] = (0.3 * rng.standard_normal(s)).astype(np.float32)
    return out


def set_unscanned(model: HybridLM, ours: dict[str, np.ndarray]) -> HybridLM:
    """Assign arrays given by (dotted attribute path -> value) into an unscanned HybridLM."""
    for name, value in ours.items():
        obj = model
        parts = name.split(".")
        for p in parts[:-1]:
            obj = obj.blocks[int(p)] if p.isdigit() else (obj[p] if isinstance(obj, nnx.Dict) else getattr(obj, p))
        leaf = obj[parts[-1]] if isinstance(obj, nnx.Dict) else getattr(obj, parts[-1])
        assert leaf[...].shape == value.shape, (name, leaf[...].shape, value.shape)
        leaf[...] = jnp.asarray(value)
    return model


@nnx.jit
def forward(model, tokens):
    """model(tokens) compiled once per architecture and shape (tests share the compilation)."""
    return model(tokens)


def tokens(vocab: int, B: int = 2, T: int = 21, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (B, T)).astype(np.int32)
