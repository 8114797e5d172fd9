"""Training configuration: a frozen `TrainConfig`, per-size defaults, and typed `--set` overrides.

A run is (`ModelConfig`, `TrainConfig`). `run_config(preset, overrides)` builds both from a
model preset name and `key=value` strings; keys name a `TrainConfig` field (`lr`,
`mesh.data`, ...) or a `ModelConfig` field (`d_model`, or explicitly `model.d_model`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from ttc_jax.nn.config import PRESETS, ModelConfig, get_config


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """Device mesh axis sizes; their product must equal the number of devices."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in ("data", "fsdp", "tensor"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"mesh.{name} must be a positive int, got {v!r}")

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data, precision, checkpointing and logging of one training run."""

    steps: int = 1000
    batch_size: int = 8  # sequences per optimizer step (all micro-batches together)
    seq_len: int = 256
    grad_accum: int = 1  # micro-batches per step; batch_size must be divisible by it
    # AdamW with linear warmup then cosine decay to end_lr (ttt-lm-jax's AdamWOptimizerFactory)
    lr: float = 3e-3
    init_lr: float = 0.0
    end_lr: float = 1e-5
    warmup_steps: int = 100
    decay_steps: int | None = None  # None: `steps`
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    # TTT inner base-lr warmup: eta multiplier ramps ttt_base_lr_init/ttt_base_lr -> 1 over
    # ttt_base_lr_warmup steps (None: warmup_steps; official TTT-MLP recipe: 0.01 -> 0.1 over the
    # outer warmup). ttt_base_lr_init None or <= 0 disables it (multiplier 1).
    ttt_base_lr_init: float | None = None
    ttt_base_lr_warmup: int | None = None
    # precision and rematerialisation (overrides of the model's own fields when not None)
    dtype: str = "float32"  # activations; parameters, optimizer and TTT inner state stay float32
    remat_layers: bool | None = None
    remat_group: int | None = None
    # data
    data_dir: str | None = None  # a prepared data dir (ttc data prepare); None: the stdlib corpus, cached
    corpus: str | None = None  # a corpus to prepare when data_dir is None (None: the Python stdlib)
    tokenizer: str = "byte"
    # evaluation, checkpoints, logging
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    keep: int = 3  # last checkpoints kept (plus the best by validation loss)
    log_every: int = 10
    ttt_stats: bool = True  # per TTT layer inner loss before/after in the metrics
    mesh: MeshShape = MeshShape()
    seed: int = 0
    # objective: "lm" (next-token loss on data_dir) or a reward model on step-labelled JSONL
    # (`ttc_jax.tasks.arithmetic.load_step_jsonl`): "prm" (BCE at every step separator) or "orm" (BCE on
    # final correctness at the last token); see `ttc_jax.train.reward`
    objective: str = "lm"
    init: str | None = None  # a checkpoint name or folder whose weights start the run (a reward model's backbone)
    step_data: str | None = None  # prm/orm: the training JSONL
    val_data: str | None = None  # prm/orm: the validation JSONL (None: val_fraction of step_data's prompts)
    val_fraction: float = 0.1
    synthetic: float = 0.0  # prm/orm: fraction of each batch from the reference / corrupted arithmetic stream
    max_left_pad: int = 16  # prm/orm: extra random left padding of training rows (0 .. max_left_pad)

    def __post_init__(self):
        if isinstance(self.mesh, dict):
            object.__setattr__(self, "mesh", MeshShape(**self.mesh))
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches",
                     "save_every", "keep", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be divisible by "
                             f"grad_accum={self.grad_accum}")
        for name in ("lr", "b1", "b2", "eps", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not (self.weight_decay >= 0 and self.init_lr >= 0 and self.end_lr >= 0 and self.warmup_steps >= 0):
            raise ValueError("TrainConfig.weight_decay, init_lr, end_lr and warmup_steps must be >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"TrainConfig.dtype={self.dtype!r}; expected 'float32' or 'bfloat16'")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}; expected one of {list(OBJECTIVES)}")
        if self.objective != "lm" and not self.step_data:
            raise ValueError(f"objective={self.objective!r} needs step_data (--data): a step-labelled JSONL file")
        if self.objective == "lm" and (self.step_data or self.val_data):
            raise ValueError(f"step_data={self.step_data!r} / val_data={self.val_data!r} (--data / --val-data) are "
                             "read by objective prm or orm only; the lm objective reads data_dir")
        if not 0.0 <= self.synthetic <= 1.0 or not 0.0 < self.val_fraction < 1.0 or self.max_left_pad < 0:
            raise ValueError(f"synthetic={self.synthetic!r}, val_fraction={self.val_fraction!r}, max_left_pad="
                             f"{self.max_left_pad!r}; expected 0 <= synthetic <= 1, 0 < val_fraction < 1, "
                             "max_left_pad >= 0")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)


OBJECTIVES = ("lm", "prm", "orm")

# Fields that may change between invocations on the same workdir without making it another run.
RESUMABLE_FIELDS = ("steps", "eval_every", "eval_batches", "save_every", "keep", "log_every", "ttt_stats", "mesh")

# Per-size training defaults (ttt-lm-jax recipe: 0.5M tokens per step, peak lr by size; ttt-math.md §7).
_SIZE_DEFAULTS = {
    "tiny": dict(batch_size=8, seq_len=256, lr=3e-3, warmup_steps=100),
    "125m": dict(batch_size=256, seq_len=2048, lr=3e-3, warmup_steps=480, steps=4800),
    "350m": dict(batch_size=256, seq_len=2048, lr=1.5e-3, warmup_steps=1350, steps=13500),
    "760m": dict(batch_size=256, seq_len=2048, lr=1.25e-3, warmup_steps=2900, steps=29000),
    "1.3b": dict(batch_size=256, seq_len=2048, lr=1e-3, warmup_steps=5000, steps=50000),
}


def base_model_config(preset: str) -> ModelConfig:
    """A preset's ModelConfig, or the architecture of a checkpoint (a shipped name or a folder)."""
    if preset in PRESETS:
        return PRESETS[preset]
    from ttc_jax.checkpoints.store import read_config, resolve
    try:
        return read_config(resolve(preset))[0]
    except ValueError as e:
        raise ValueError(f"unknown preset --config={preset!r}; expected one of {sorted(PRESETS)} or a checkpoint "
                         f"name / folder ({e})") from None


def default_train_config(preset: str) -> TrainConfig:
    """Training defaults for a model preset (TTT-MLP presets ramp the inner base lr 0.01 -> 0.1); a
    checkpoint given as the config gets the tiny defaults."""
    mcfg = base_model_config(preset)
    size = "tiny" if preset.startswith("tiny") or preset not in PRESETS else preset.rsplit("-", 1)[1]
    kw = dict(_SIZE_DEFAULTS[size])
    if "ttt_mlp" in mcfg.layer_pattern:
        kw.update(ttt_base_lr_init=0.01)
    return TrainConfig(**kw)


# --- typed overrides -------------------------------------------------------------------------------

def _parse_value(key: str, text: str, typ: Any) -> Any:
    """Parse `text` as type `typ` (bool/int/float/str, Optional, tuples of str, Literal)."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _parse_value(key, text, a)
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if text not in args:
            raise ValueError(f"--set {key}={text!r}: expected one of {list(args)}")
        return text
    if typ is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--set {key}={text!r}: expected a bool (true/false)")
    if typ is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {key}={text!r}: expected an int") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}={text!r}: expected a float") from None
    if typ is str:
        return text
    if origin is tuple:
        return tuple(s.strip() for s in text.split(",") if s.strip())
    raise ValueError(f"--set {key}: unsupported field type {typ!r}")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(items: list[str] | None) -> tuple[dict, dict]:
    """`key=value` strings -> (model field overrides, train field overrides), typed.

    Raises a one-line ValueError for a malformed item, an unknown key or a wrong type."""
    model_types, train_types = _field_types(ModelConfig), _field_types(TrainConfig)
    mesh_types = _field_types(MeshShape)
    model_kw, train_kw, mesh_kw = {}, {}, {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("model."):
            name = key[len("model."):]
            if name not in model_types:
                raise ValueError(f"--set: unknown model key {key!r}; expected one of {sorted(model_types)}")
            model_kw[name] = _parse_value(key, text, model_types[name])
        elif key.startswith("mesh."):
            name = key[len("mesh."):]
            if name not in mesh_types:
                raise ValueError(f"--set: unknown key {key!r}; expected mesh.data, mesh.fsdp or mesh.tensor")
            mesh_kw[name] = _parse_value(key, text, mesh_types[name])
        elif key in train_types and key != "mesh":
            train_kw[key] = _parse_value(key, text, train_types[key])
        elif key in model_types:
            model_kw[key] = _parse_value(key, text, model_types[key])
        else:
            raise ValueError(f"--set: unknown key {key!r}; expected a TrainConfig field "
                             f"({', '.join(n for n in train_types if n != 'mesh')}, mesh.data|fsdp|tensor) "
                             f"or a ModelConfig field (model.<name>)")
    if mesh_kw:
        train_kw["mesh"] = mesh_kw
    return model_kw, train_kw


def run_config(preset: str, overrides: list[str] | None = None, *, steps: int | None = None
               ) -> tuple[ModelConfig, TrainConfig]:
    """(model config, train config) for a preset with `--set` overrides (and --steps) applied."""
    tcfg = default_train_config(preset)
    model_kw, train_kw = parse_overrides(overrides)
    if "mesh" in train_kw:
        train_kw["mesh"] = dataclasses.replace(tcfg.mesh, **train_kw["mesh"])
    if steps is not None:
        train_kw["steps"] = steps
    tcfg = tcfg.replace(**train_kw)
    mcfg = get_config(preset, **model_kw) if preset in PRESETS else base_model_config(preset).replace(**model_kw)
    return model_for_training(mcfg, tcfg), tcfg


def model_for_training(mcfg: ModelConfig, tcfg: TrainConfig) -> ModelConfig:
    """The model config with the training run's precision/remat knobs and context length applied."""
    kw: dict[str, Any] = {"dtype": tcfg.dtype}
    if tcfg.remat_layers is not None:
        kw["remat_layers"] = tcfg.remat_layers
    if tcfg.remat_group is not None:
        kw["remat_group"] = tcfg.remat_group
    if mcfg.max_seq_len < tcfg.seq_len:
        kw["max_seq_len"] = tcfg.seq_len
    return mcfg.replace(**kw)


# --- serialisation (the workdir's config.json) -------------------------------------------------------

def to_json(mcfg: ModelConfig, tcfg: TrainConfig, preset: str) -> dict:
    return {"preset": preset, "model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg)}


def from_json(d: dict) -> tuple[ModelConfig, TrainConfig, str]:
    m = dict(d["model"])
    m["layer_pattern"] = tuple(m["layer_pattern"])
    return ModelConfig(**m), TrainConfig(**d["train"]), d.get("preset", "?")


def run_identity(d: dict) -> dict:
    """The part of a config JSON that must match to resume a workdir (fields it lacks take their defaults,
    so workdirs written before a field existed still resume)."""
    d = json.loads(json.dumps(d))
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
    d["train"] = {**defaults, **d.get("train", {})}
    for name in RESUMABLE_FIELDS:
        d["train"].pop(name, None)
    return d


def diff_identity(old: dict, new: dict) -> list[str]:
    """Keys (model.x / train.x) whose values differ between two config JSONs, ignoring resumable fields."""
    a, b = run_identity(old), run_identity(new)
    out = []
    for sec in ("model", "train"):
        for k in sorted(set(a.get(sec, {})) | set(b.get(sec, {}))):
            if a.get(sec, {}).get(k) != b.get(sec, {}).get(k):
                out.append(f"{sec}.{k}: {a.get(sec, {}).get(k)!r} -> {b.get(sec, {}).get(k)!r}")
    return out
