"""The one place that imports Mosaic GPU Pallas, including its private CPU interpreter.

`jax.experimental.pallas.mosaic_gpu` needs `absl-py`; the interpreter class
`InterpretGPUParams` lives in a private module (JAX 0.10 / 0.11:
`jax._src.pallas.mosaic_gpu.interpret.params`). Both are imported lazily, so that
importing `ttc_jax.kernels` never fails; a kernel call without them raises one clear
ImportError naming what is missing.

Also the helpers that work around gaps of the 0.10.2 interpreter (no `layout_cast`,
no `transpose_ref` as a `wgmma` operand): on hardware they emit the real Mosaic GPU
construct; under the interpreter, its plain-array equivalent.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp


@functools.cache
def plgpu():
    """`jax.experimental.pallas.mosaic_gpu`, or an ImportError saying what to install."""
    try:
        import jax.experimental.pallas.mosaic_gpu as mod
    except ImportError as e:  # absl-py missing, or a JAX without Mosaic GPU
        raise ImportError(f"the Mosaic GPU kernels need jax.experimental.pallas.mosaic_gpu ({e}); "
                          "install absl-py (pip install absl-py) and jax>=0.10") from e
    return mod


@functools.cache
def _interpret_params_class():
    try:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    except ImportError as e:
        raise ImportError("the Mosaic GPU interpreter (jax._src.pallas.mosaic_gpu.interpret.params."
                          f"InterpretGPUParams) is not importable in this JAX ({e}); it is private API "
                          "known in jax 0.10.2 and 0.11; run on a Hopper GPU or use the TPU/XLA kernels") from e
    return InterpretGPUParams


def interpret_params(interpret: bool, detect_races: bool = False):
    """The `interpret=` argument of `plgpu.kernel`: None on hardware, else InterpretGPUParams."""
    if not interpret:
        return None
    return _interpret_params_class()(detect_races=detect_races)


def swizzled(dtype, shape) -> dict:
    """SMEM transforms for a 2-D wgmma operand / TMA tile: tiling (8, swizzle/itemsize) + swizzle."""
    item = jnp.dtype(dtype).itemsize
    swizzle = min(128, shape[-1] * item)
    g = plgpu()
    return {"transforms": (g.TilingTransform((8, swizzle // item)), g.SwizzleTransform(swizzle))}


def layout_fns(interpret: bool):
    """(row_vec, col_vec, full): layout casts of 1-D row / column vectors and [m, n] tiles.

    The interpreter has no `layout_cast` and infers nothing, so there they are identities.
    """
    if interpret:
        ident = lambda x: x
        return ident, ident, ident
    g = plgpu()
    return (lambda x: g.layout_cast(x, g.Layout.WGMMA.reduce(1)),
            lambda x: g.layout_cast(x, g.Layout.WGMMA.reduce(0)),
            lambda x: g.layout_cast(x, g.Layout.WGMMA))
