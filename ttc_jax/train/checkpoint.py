"""Orbax checkpoints of a training run: async saves, keep the last k and the best by validation loss.

A checkpoint step holds two items: "state" (step, params, optimizer state, RNG; a pytree saved with
`StandardSave`, restored onto any target sharding) and "data" (the data iterator position, JSON).
Orbax writes each step into a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous complete step as the latest; leftovers are cleaned up on the next start.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _shape_tree(tree) -> dict:
    """{'a/b/0': shape} (named tuples and dicts, int and str keys spelled alike)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in p): tuple(getattr(x, "shape", ())) for p, x in leaves}


class Checkpointer:
    """A `CheckpointManager` over `directory` (created on the first save, not before)."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=lambda m: -float(m["val_loss"]), n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save and not read_only,
            cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None, *, val_loss: float | None = None) -> bool:
        """Start an async save of `state` (a pytree) and the iterator position at `step`."""
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave(data_state or {})),
            metrics=metrics, force=True)

    def check_compatible(self, step: int, target) -> None:
        """Raise a one-line ValueError when the checkpoint's shapes differ from the target's."""
        meta = self.manager.item_metadata(step)["state"]
        tree = getattr(meta, "tree", meta)
        if tree is None:
            raise ValueError(f"checkpoint {self.directory}/{step} has no readable state metadata")
        got, want = _shape_tree(tree), _shape_tree(target)
        if set(got) != set(want):
            missing = sorted(set(want) - set(got))[:2]
            extra = sorted(set(got) - set(want))[:2]
            raise ValueError(f"checkpoint {self.directory}/{step} does not match the config: it lacks "
                             f"{missing} and has extra {extra}")
        for k in sorted(want, key=lambda k: (not k.startswith("params"), k)):
            if tuple(got[k]) != tuple(want[k]):
                raise ValueError(f"checkpoint {self.directory}/{step} does not match the config: {k} has "
                                 f"shape {tuple(got[k])}, the config expects {tuple(want[k])}")

    def restore(self, step: int, target):
        """(state onto `target`'s shapes/dtypes/shardings, data iterator position) at `step`."""
        self.check_compatible(step, target)
        abstract = jax.tree.map(_abstract, target)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
