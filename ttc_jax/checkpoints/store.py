"""Our checkpoint folder: orbax parameters + config.json + README.md (model card).

    <folder>/config.json   {"format": "ttc-jax", "format_version": 1, "model": {ModelConfig fields},
                            "tokenizer": {"name": ...} (optional), "metadata": {...} (optional)}
    <folder>/params/       orbax StandardCheckpointer directory of the model's nnx.Param state
    <folder>/README.md     model card

Writes are atomic: everything goes to a temporary sibling folder that is renamed
into place at the end, so a failed save leaves an existing checkpoint untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.model import HybridLM

FORMAT = "ttc-jax"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CARD_FILE = "README.md"
ENV_CHECKPOINTS = "TTC_CHECKPOINTS"


# --- config <-> json -------------------------------------------------------------------------------------------

def config_to_dict(cfg: ModelConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["layer_pattern"] = list(cfg.layer_pattern)
    return d


def config_from_dict(d: dict, *, source: str) -> ModelConfig:
    if not isinstance(d, dict):
        raise ValueError(f"{source}: 'model' must be a JSON object of ModelConfig fields, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown ModelConfig field(s) {unknown}; expected a subset of {sorted(fields)}")
    d = dict(d)
    if isinstance(d.get("layer_pattern"), list):
        d["layer_pattern"] = tuple(d["layer_pattern"])
    try:
        return ModelConfig(**d)
    except TypeError as e:
        raise ValueError(f"{source}: bad ModelConfig fields: {e}") from None


# --- where checkpoints live --------------------------------------------------------------------------------------

def checkpoints_dir() -> Path:
    """The folder of shipped checkpoints: $TTC_CHECKPOINTS, else checkpoints/ at the repository root."""
    env = os.environ.get(ENV_CHECKPOINTS)
    return Path(env).expanduser().absolute() if env else Path(__file__).resolve().parents[2] / "checkpoints"


def known_names() -> list[str]:
    """Names of the shipped checkpoints (sub-folders of `checkpoints_dir()` holding a config.json)."""
    root = checkpoints_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file())


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.startswith((".", "~"))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint folder from a shipped name or a local path (ValueError when neither exists)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"name_or_path={name_or_path!r}; expected a checkpoint name or a folder path")
    s = os.fspath(name_or_path)
    path = Path(s).expanduser().absolute()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"name_or_path={s!r} is a file; expected a checkpoint folder (config.json, params/, "
                         f"README.md). Foreign checkpoints: `ttc convert --from ttt-lm-jax|safetensors`")
    if _looks_like_path(s):
        raise ValueError(f"name_or_path={s!r}: no such checkpoint folder")
    names = known_names()
    if s in names:
        return checkpoints_dir() / s
    raise ValueError(f"unknown model name={s!r}; known names: {names or 'none'} "
                     f"(shipped in {checkpoints_dir()}), or pass a folder path")


# --- save ---------------------------------------------------------------------------------------------------------

def _default_card(cfg: ModelConfig, n_params: int, metadata: dict | None) -> str:
    lines = ["# ttc-jax checkpoint", "",
             f"HybridLM, {n_params:,} parameters: layers {cfg.n_layers} x {list(cfg.layer_pattern)}, "
             f"d_model {cfg.d_model}, heads {cfg.n_heads}, vocab {cfg.vocab_size}, mini-batch {cfg.mini_batch_size}, "
             f"pre_conv {cfg.has_pre_conv}, q/k conv {cfg.has_qk_conv}, gate {cfg.has_gate}, "
             f"tied embeddings {cfg.tie_word_embeddings}.", "",
             "```python", "import ttc_jax", "model, config = ttc_jax.from_pretrained(PATH)", "```"]
    if metadata:
        lines += ["", "## Metadata", ""] + [f"- {k}: {v}" for k, v in metadata.items()]
    return "\n".join(lines) + "\n"


def _replace_dir(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished temp folder to dst; an existing dst is removed only after the move succeeded."""
    if dst.exists():
        if not overwrite:
            raise ValueError(f"path={str(dst)!r} already exists; pass overwrite=True to replace it")
        old = dst.with_name(dst.name + f".old-{os.getpid()}")
        os.replace(dst, old)
        try:
            os.replace(tmp, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


def atomic_dir(dst: Path):
    """A fresh temporary folder next to dst (same file system, so the final rename is atomic)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    tmp.chmod(0o755)
    return tmp


def save_pretrained(model: HybridLM, config: ModelConfig, path: str | os.PathLike, *, card: str | None = None,
                    tokenizer=None, metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write `model` to the folder `path` (orbax params, config.json, README.md); returns the path.

    `card` replaces the generated model card; `tokenizer` (a tokenizer of ttc_jax.data, its spec, or
    "byte") is recorded so that `from_pretrained(..., with_tokenizer=True)` returns it.
    """
    if not isinstance(model, HybridLM):
        raise ValueError(f"model is a {type(model).__name__}; expected a ttc_jax.nn.HybridLM")
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config is a {type(config).__name__}; expected a ttc_jax.nn.ModelConfig")
    if config != model.cfg:
        raise ValueError("config does not match model.cfg; save the config the model was built with")
    spec = tokenizer_spec(tokenizer)
    dst = Path(path).expanduser().absolute()  # orbax needs absolute paths
    if dst.exists() and not overwrite:
        raise ValueError(f"path={str(dst)!r} already exists; pass overwrite=True to replace it")
    import orbax.checkpoint as ocp

    state = nnx.state(model, nnx.Param)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
    tmp = atomic_dir(dst)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, nnx.to_pure_dict(state))
            ckptr.wait_until_finished()
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config_to_dict(config)}
        if spec is not None:
            doc["tokenizer"] = spec
        if metadata:
            doc["metadata"] = metadata
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / CARD_FILE).write_text(card if card is not None else _default_card(config, n_params, metadata))
        _replace_dir(tmp, dst, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


# --- load ---------------------------------------------------------------------------------------------------------

def read_config(folder: Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole config.json document) of a checkpoint folder."""
    f = folder / CONFIG_FILE
    if not f.is_file():
        raise ValueError(f"{folder}: no {CONFIG_FILE}; expected a ttc-jax checkpoint folder")
    try:
        doc = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{f}: 'format' is {doc.get('format') if isinstance(doc, dict) else doc!r}; expected "
                         f"{FORMAT!r} (foreign checkpoints: `ttc convert`)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{f}: format_version={doc.get('format_version')!r}; this ttc-jax reads {FORMAT_VERSION}")
    return config_from_dict(doc.get("model"), source=str(f)), doc


def _default_shardings(abstract_state, mesh):
    """NamedShardings from the parameters' logical axis names (replicated where a dim does not divide)."""
    from jax.sharding import NamedSharding, PartitionSpec

    try:
        from ttc_jax.nn.partitioning import logical_to_spec, param_axes
    except ImportError:  # no logical axis annotations: replicate
        logical_to_spec = param_axes = None

    def one(var):
        spec = PartitionSpec()
        axes = param_axes(var) if param_axes is not None else None
        if axes is not None:
            spec = logical_to_spec(axes, mesh_axes=mesh.axis_names)
        dims = []
        for size, entry in zip(var.shape, tuple(spec) + (None,) * (len(var.shape) - len(spec))):
            names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
            n = int(np.prod([mesh.shape[a] for a in names])) if names else 1
            dims.append(entry if size % n == 0 else None)
        return NamedSharding(mesh, PartitionSpec(*dims))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def load_folder(folder: Path, *, dtype=None, mesh=None, shardings=None) -> tuple[HybridLM, ModelConfig, dict]:
    """(model, config, config.json document) from one of our checkpoint folders."""
    import orbax.checkpoint as ocp

    cfg, doc = read_config(folder)
    if dtype is not None:
        cfg = cfg.replace(dtype=jnp.dtype(dtype).name)
    params_dir = folder / PARAMS_DIR
    if not params_dir.is_dir():
        raise ValueError(f"{folder}: no {PARAMS_DIR}/ folder; the checkpoint is incomplete")
    abstract = nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)
    if shardings is None and mesh is not None:
        shardings = _default_shardings(abstract_state, mesh)
    if callable(shardings):
        shardings = jax.tree.map(shardings, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    target = nnx.to_pure_dict(abstract_state)
    if shardings is not None:
        sh = nnx.to_pure_dict(shardings) if isinstance(shardings, nnx.State) else shardings
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, sh)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(params_dir)
            meta_tree = getattr(meta, "item_metadata", meta)
            meta_tree = getattr(meta_tree, "tree", meta_tree)
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds here
            raise ValueError(f"{params_dir}: unreadable orbax checkpoint ({type(e).__name__}: {e})") from None
        if not meta_tree:  # orbax only warns when it cannot read the metadata
            raise ValueError(f"{params_dir}: unreadable or corrupted orbax checkpoint (no parameter metadata)")
        _check_tree(target, meta_tree, folder)
        try:
            restored = ckptr.restore(params_dir, target)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{params_dir}: corrupted or incomplete parameters ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if dtype is not None:
        restored = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, restored)
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state), cfg, doc


def _flat_paths(tree) -> dict[str, tuple]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[key] = tuple(getattr(leaf, "shape", ()))
    return out


def _check_tree(target, meta_tree, folder: Path) -> None:
    """ValueError naming the first difference between the saved tree and the architecture in config.json."""
    want, got = _flat_paths(target), _flat_paths(meta_tree)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"{folder}: parameters do not match the architecture in {CONFIG_FILE}: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    for k, shape in want.items():
        if got[k] != shape:
            raise ValueError(f"{folder}: parameter {k} has shape {got[k]}; the architecture in {CONFIG_FILE} "
                             f"expects {shape}")


def tokenizer_spec(tokenizer) -> dict | None:
    """The JSON spec recorded for a tokenizer: its `.spec`, or "byte" / a spec dict as given."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, dict):
        return tokenizer
    if tokenizer == "byte":
        return {"kind": "byte"}
    spec = getattr(tokenizer, "spec", None)
    if not isinstance(spec, dict):
        raise ValueError(f"tokenizer={tokenizer!r}; expected a tokenizer with a .spec, a spec dict or 'byte'")
    return spec


def load_tokenizer(spec: dict | None):
    """The tokenizer of a recorded spec (ttc_jax.data.get_tokenizer); None without a spec."""
    if spec is None:
        return None
    from ttc_jax.data import get_tokenizer

    return get_tokenizer(spec)


def from_pretrained(name_or_path, *, dtype=None, mesh=None, shardings=None, with_tokenizer: bool = False):
    """(model, config) from a shipped checkpoint name or a checkpoint folder.

    dtype: cast floating parameters to it and compute in it (default: as saved, float32).
    mesh / shardings: restore each parameter directly onto devices; `shardings` is a pytree of
    shardings matching the parameter state or a function of one abstract parameter; with only
    `mesh`, the parameters' logical axis names decide (replicated where none or not divisible).
    with_tokenizer: return (model, config, tokenizer or None).
    """
    folder = resolve(name_or_path)
    model, cfg, doc = load_folder(folder, dtype=dtype, mesh=mesh, shardings=shardings)
    if with_tokenizer:
        return model, cfg, load_tokenizer(doc.get("tokenizer"))
    return model, cfg
