"""Which parameters a scope adapts: a pure function of parameter paths and their layer indices.

A selection maps each adapted parameter path to the first adapted row along its leading axis:
0 adapts the whole array; r > 0 adapts rows r: of a layer-stacked array (the last groups of a
scanned HybridLM), leaving rows :r untouched.
"""

from __future__ import annotations

from typing import Mapping, Sequence

Path = tuple
Selection = dict  # {path: first adapted row}

SCOPES = ("all", "lora", "last_k", "norms", "ttt_w0")
# module names whose `kernel` gets a LoRA adapter: TTT / attention projections and the SwiGLU MLP
LORA_TARGETS = ("wq", "wk", "wv", "wo", "wg", "w1", "w2", "w3")


def _is_norm(path: Path) -> bool:
    return any(isinstance(c, str) and "norm" in c for c in path)


def select(paths: Sequence[Path], scope: str, *, layers: Mapping[Path, int | tuple[int, ...]],
           n_layers: int, last_k: int = 1, lora_targets: Sequence[str] = LORA_TARGETS) -> Selection:
    """The selection of `scope` over `paths`.

    `layers[path]` is the layer index of a block parameter, or the per-row layer indices of a stacked
    one (absent for the embedding, final norm and head). "all": every parameter; "norms": every path
    with a component containing "norm" (block RMSNorms, pre-conv norm, TTT post-norm and inner-loss
    LayerNorm, final norm); "ttt_w0": the TTT layers' initial fast weights (fast_weights.*);
    "last_k": block parameters of layers n_layers - last_k ...; "lora": the kernels that get
    adapters (paths ending in <target>.kernel), all whole.
    """
    if scope == "all":
        return {p: 0 for p in paths}
    if scope == "norms":
        return {p: 0 for p in paths if _is_norm(p)}
    if scope == "ttt_w0":
        return {p: 0 for p in paths if "fast_weights" in p}
    if scope == "lora":
        return {p: 0 for p in paths if len(p) >= 2 and p[-1] == "kernel" and p[-2] in lora_targets}
    if scope == "last_k":
        first = n_layers - last_k
        out = {}
        for p in paths:
            layer = layers.get(p)
            if layer is None:
                continue
            if isinstance(layer, tuple):  # stacked rows, layer indices increasing
                rows = [r for r, l in enumerate(layer) if l >= first]
                if rows:
                    out[p] = rows[0]
            elif layer >= first:
                out[p] = 0
        return out
    raise ValueError(f"scope={scope!r}; expected one of {SCOPES}")


def take(flat: Mapping[Path, object], sel: Selection) -> dict:
    """The adapted part of each selected array."""
    return {p: (flat[p][r:] if r else flat[p]) for p, r in sel.items()}


def put(flat: Mapping[Path, object], sel: Selection, part: Mapping[Path, object]) -> dict:
    """`flat` with the selected parts replaced by `part` (untouched rows are the original arrays)."""
    import jax.numpy as jnp

    out = dict(flat)
    for p, r in sel.items():
        out[p] = jnp.concatenate([flat[p][:r], part[p]], axis=0) if r else part[p]
    return out
