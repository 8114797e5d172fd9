"""Logical axis names of parameters and activations, and the one table mapping them to mesh axes.

Every parameter carries a tuple of logical axis names (flax's `out_sharding`
metadata, one name or None per dimension), set where its module is built;
the scanned layer groups add a leading "layers" axis. `LOGICAL_AXIS_RULES`
maps each name to mesh axes ("data", "fsdp", "tensor") or None (replicated);
a new layer kind only adds names here. Activations are constrained with
`constrain(x, *names)`, a no-op unless a mesh is set (`jax.set_mesh`), so the
model runs unchanged on one device.

Names: "heads" is an axis over heads, or over heads x head_dim flattened
head-major (the projections' output), so both shard the same heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("ttt_hidden", None),  # the TTT-MLP fast weights' 4F width
    ("mini_batch", None),  # per-position row factors of the inner loop
    ("conv_width", None),
    ("conv_channels", None),
    ("norm", None),
    ("layers", None),  # leading axis of scanned layer groups
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)

Axes = tuple[str | None, ...]


def name_axes(module: nnx.Module, axes: Mapping[str, Axes]) -> None:
    """Attach logical axis names to parameters of `module` by attribute path ("wq.kernel", "fast_weights.w1").

    Paths whose attribute is absent (e.g. "wk.kernel" in a layer without wk) are skipped; a name
    tuple must have one entry per dimension of the parameter.
    """
    for path, names in axes.items():
        obj = module
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is None:
            continue
        if not isinstance(obj, nnx.Variable):
            raise TypeError(f"name_axes: {type(module).__name__}.{path} is not a Variable")
        names = tuple(names)
        if len(names) != obj.ndim:
            raise ValueError(f"name_axes: {type(module).__name__}.{path} has shape {tuple(obj.shape)} "
                             f"but {len(names)} axis names {names}")
        obj.set_metadata(out_sharding=names, eager_sharding=False)


def param_axes(variable: nnx.Variable) -> Axes | None:
    """The logical axis names of a parameter, or None when it has none."""
    names = variable.get_metadata().get("out_sharding")
    return tuple(names) if names else None


def current_rules():
    """Rules of an enclosing `nnx.logical_axis_rules(...)` context, else `LOGICAL_AXIS_RULES`."""
    return flax_spmd.get_logical_axis_rules() or LOGICAL_AXIS_RULES


def logical_to_spec(names: Sequence[str | None], rules=None, mesh_axes: Sequence[str] | None = None
                    ) -> PartitionSpec:
    """PartitionSpec of logical `names` under `rules` (default: `current_rules()`).

    Mesh axes not in `mesh_axes` (when given) are dropped; a name missing from the rules, or a
    mesh axis used twice, is an error.
    """
    table = dict(current_rules() if rules is None else rules)
    used: set[str] = set()
    spec = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis name {name!r} has no rule; add it to the rules table "
                             f"(known: {sorted(table)})")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        if mesh_axes is not None:
            axes = tuple(a for a in axes if a in mesh_axes)
        for a in axes:
            if a in used:
                raise ValueError(f"logical axes {tuple(names)} map mesh axis {a!r} twice")
            used.add(a)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """`with_sharding_constraint` of x by logical names when a mesh is set (`jax.set_mesh`); else x."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} axis names {names} for an array of shape {tuple(x.shape)}")
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, mesh_axes=mesh.axis_names))


# Logical names of the TTT inner learners' initial fast weights (`ttc_jax.ttt.LEARNERS[kind].weight_shapes`).
FAST_WEIGHT_AXES: dict[str, dict[str, Axes]] = {
    "ttt_linear": {"w1": ("heads", "head_dim", "head_dim"), "b1": ("heads", None, "head_dim")},
    "ttt_mlp": {"w1": ("heads", "head_dim", "ttt_hidden"), "b1": ("heads", None, "ttt_hidden"),
                "w2": ("heads", "ttt_hidden", "head_dim"), "b2": ("heads", None, "head_dim")},
}
