"""Device mesh (data x fsdp x tensor), parameter and batch shardings from logical axis names, multi-host init.

The logical names live on the parameters (`ttc_jax.nn.partitioning`); one
rules table (`LOGICAL_AXIS_RULES`) maps them to the mesh axes here:

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    check_divisibility(model_cfg, global_batch_size, mesh_cfg)
    shard_model(model, mesh)                    # parameters placed as the rules say
    with use_mesh(mesh):                        # activation constraints become active
        loss = jit_step(model, jax.device_put(batch, batch_sharding(mesh)))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ttc_jax.nn.partitioning import LOGICAL_AXIS_RULES, MESH_AXES, logical_to_spec, param_axes

log = logging.getLogger(__name__)

__all__ = ["LOGICAL_AXIS_RULES", "MESH_AXES", "MeshConfig", "batch_sharding", "check_divisibility", "make_mesh",
           "maybe_initialize_distributed", "param_shardings", "shard_batch", "shard_model", "use_mesh"]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Devices along each mesh axis; their product must be the device count (all hosts together)."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in MESH_AXES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"mesh.{name}={value!r}; expected a positive int")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def batch_shards(self) -> int:
        """Ways the batch is split: data x fsdp."""
        return self.data * self.fsdp


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """`jax.make_mesh` with axes ("data", "fsdp", "tensor") over all devices (or `devices`)."""
    n = len(devices) if devices is not None else jax.device_count()
    if cfg.size != n:
        raise ValueError(f"mesh data x fsdp x tensor = {cfg.data} x {cfg.fsdp} x {cfg.tensor} = {cfg.size} "
                         f"devices, but there are {n}; choose mesh.data, mesh.fsdp, mesh.tensor with product {n}")
    return jax.make_mesh(cfg.shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def check_divisibility(model_cfg, batch_size: int, mesh_cfg: MeshConfig) -> None:
    """ValueError unless the mesh divides the global batch (data x fsdp), the heads, MLP width and vocab
    (tensor) and the model width (fsdp)."""
    checks = [
        ("batch_size", batch_size, "data x fsdp", mesh_cfg.batch_shards),
        ("n_heads", model_cfg.n_heads, "tensor", mesh_cfg.tensor),
        ("ffn_dim", model_cfg.ffn_dim, "tensor", mesh_cfg.tensor),
        ("vocab_size", model_cfg.vocab_size, "tensor", mesh_cfg.tensor),
        ("d_model", model_cfg.d_model, "fsdp", mesh_cfg.fsdp),
    ]
    for name, value, axes, ways in checks:
        if value % ways:
            raise ValueError(f"{name}={value} is not divisible by mesh {axes} = {ways} "
                             f"(mesh data={mesh_cfg.data}, fsdp={mesh_cfg.fsdp}, tensor={mesh_cfg.tensor})")


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def param_shardings(tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for `tree` (a module, or a State / pytree of Variables such as an optimizer's):
    a Variable with logical axis names is sharded by `rules`, anything else replicated. Same structure
    as `nnx.state(tree)` for a module, else as `tree`."""
    state = nnx.state(tree) if isinstance(tree, nnx.Module) else tree
    axis_sizes = dict(zip(mesh.axis_names, mesh.devices.shape))

    def one(path, x):
        if not _is_variable(x):
            return NamedSharding(mesh, PartitionSpec())
        names = param_axes(x)
        spec = PartitionSpec() if names is None else logical_to_spec(names, rules, mesh.axis_names)
        for dim, (size, axes) in enumerate(zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec)))):
            ways = math.prod(axis_sizes[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
            if size % ways:
                where = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
                raise ValueError(f"parameter {where} dimension {dim} ({names[dim]}) of size {size} is not "
                                 f"divisible by mesh axes {axes} = {ways}")
        return x.replace(NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def shard_model(model: nnx.Module, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> nnx.Module:
    """Place every parameter of `model` (in place) as its logical axis names and `rules` say; returns model."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules)))
    return model


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of [B, T] batch arrays: B over data x fsdp, T replicated."""
    return NamedSharding(mesh, logical_to_spec(("activation_batch", "activation_length"),
                                               LOGICAL_AXIS_RULES, mesh.axis_names))


def shard_batch(batch, mesh: Mesh):
    """Global arrays from this host's rows (a dict / pytree of [B_host, ...] numpy arrays), batch-sharded.

    On one host the rows are the whole batch; on many, host i passes the rows of
    `make_iterator(..., shard_index=jax.process_index(), shard_count=jax.process_count())`.
    """
    def one(x):
        spec = logical_to_spec(("activation_batch",) + (None,) * (x.ndim - 1), LOGICAL_AXIS_RULES, mesh.axis_names)
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

    return jax.tree.map(one, batch)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Set `mesh` (jax.set_mesh) and the logical rules while tracing, so activation constraints apply."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        yield mesh


# --- multi-host -----------------------------------------------------------------

def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}; expected an int") from None


def _multi_host_environment() -> str | None:
    """Which multi-process launcher this process runs under, or None for a single host."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if "SLURM_JOB_ID" in env and (_env_int("SLURM_NTASKS") or _env_int("SLURM_STEP_NUM_TASKS") or 1) > 1:
        return "slurm"
    if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "openmpi"
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Call `jax.distributed.initialize` when this process is one of several; a no-op on a single host.

    Initializes when arguments are given, when TTC_DISTRIBUTED=1 (e.g. on a Cloud TPU pod slice,
    where JAX finds the hosts itself), or under a detected multi-process launcher:
    JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), SLURM with more than one
    task, Open MPI, or TPU worker lists. TTC_DISTRIBUTED=0 disables it. Must run before any
    other JAX call. Returns True when it initialized.
    """
    flag = os.environ.get("TTC_DISTRIBUTED", "")
    if flag not in ("", "0", "1"):
        raise ValueError(f"environment variable TTC_DISTRIBUTED={flag!r}; expected 0 or 1")
    if flag == "0" or jax.distributed.is_initialized():
        return False
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    launcher = "arguments" if explicit else "TTC_DISTRIBUTED=1" if flag == "1" else _multi_host_environment()
    if launcher is None:
        return False
    if launcher == "JAX_COORDINATOR_ADDRESS":
        num_processes = _env_int("JAX_NUM_PROCESSES")
        process_id = _env_int("JAX_PROCESS_ID")
    log.info("jax.distributed.initialize (%s)", launcher)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True
