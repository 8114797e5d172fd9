"""Reading and writing the published checkpoint formats.

- ttt-lm-jax: the official streaming msgpack file (`streaming_train_state[_STEP]` or
  `streaming_params[_STEP]`): a stream of (key path, flax-serialised array) pairs, read one entry at
  a time; optimizer entries are skipped without decoding. The architecture is inferred from the
  parameter names and shapes; what they cannot tell (ttt_base_lr, rope_theta, the RMSNorm epsilon,
  the maximum length) are options with the official defaults.
- The ttt-lm-pytorch port: a Hugging Face-style folder with `config.json` (TTTConfig fields; a
  missing key takes TTTConfig's default) and `model.safetensors`. Import and export.

Names and layouts: `ttc_jax.checkpoints.names`. Pickles are never loaded: a pickle (or a zip
archive such as a torch `.bin`/`.pt`) offered as input is recognised by its first bytes and refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ttc_jax.checkpoints import names as N
from ttc_jax.checkpoints.params import build_model, expected_shapes, model_params
from ttc_jax.nn.config import ModelConfig

FLOAT_KINDS = ("bfloat16", "float16", "float32", "float64")


# --- input checks ---------------------------------------------------------------------------------------------------

def refuse_pickle(path: Path, what: str) -> None:
    """ValueError when the file starts like a pickle or a zip archive (torch .bin/.pt hold pickles)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        raise ValueError(f"{what}={str(path)!r} is a Python pickle; pickles are never loaded (they can run code). "
                         f"Expected {'a msgpack stream' if 'jax' in what else 'model.safetensors'}")
    if head[:4] == b"PK\x03\x04":
        raise ValueError(f"{what}={str(path)!r} is a zip archive (a torch .bin/.pt pickle checkpoint); pickles are "
                         f"never loaded. Save it as safetensors first")


def _as_float32(x, key: str, source: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.name not in FLOAT_KINDS:
        raise ValueError(f"{source}: parameter {key} has dtype {arr.dtype}; expected a float dtype {FLOAT_KINDS}")
    return arr.astype(np.float32)


def map_to_ours(arrays: dict[str, np.ndarray], cfg: ModelConfig, fmt: str, *, source: str,
                ignore: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Foreign name -> array into our flat names, checking names and shapes against `cfg`."""
    want = expected_shapes(cfg)
    mapping = {k: v for k, v in N.name_map(cfg.n_layers, fmt).items() if v[0] in want}
    unknown = sorted(k for k in arrays if k not in mapping and k not in ignore)
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} unknown key(s) for the inferred architecture, e.g. "
                         f"{unknown[:4]}")
    missing = sorted(k for k in mapping if k not in arrays)
    if missing:
        raise ValueError(f"{source}: missing {len(missing)} key(s), e.g. {missing[:4]}")
    out = {}
    for key, (ours, kind) in mapping.items():
        expected = N.foreign_shape(want[ours], kind, fmt)
        got = tuple(np.shape(arrays[key]))
        if got != expected:
            raise ValueError(f"{source}: {key} has shape {got}; expected {expected}")
        out[ours] = N.to_ours(_as_float32(arrays[key], key, source), kind, fmt)
    return out


def _flags_config(share_qk: bool, use_gate: bool, pre_conv: bool) -> dict:
    """backbone + flags: a preset backbone when the three agree, explicit flags otherwise."""
    if share_qk and use_gate and pre_conv:
        return {"backbone": "mamba"}
    if not (share_qk or use_gate or pre_conv):
        return {"backbone": "transformer"}
    return {"backbone": "transformer", "pre_conv": pre_conv, "share_qk": share_qk, "use_gate": use_gate}


def _pattern(kinds: list[str]) -> tuple[str, ...]:
    """The shortest period whose repetition gives `kinds`."""
    for p in range(1, len(kinds) + 1):
        if all(kinds[i] == kinds[i % p] for i in range(len(kinds))):
            return tuple(kinds[:p])
    return tuple(kinds)


# --- ttt-lm-jax -----------------------------------------------------------------------------------------------------

def _find_stream(src: Path) -> Path:
    if src.is_file():
        return src
    if not src.exists():
        raise ValueError(f"src={str(src)!r}: no such file or folder")
    found = sorted(p for p in src.iterdir() if p.is_file() and p.name.startswith(("streaming_train_state",
                                                                                  "streaming_params")))
    if len(found) != 1:
        raise ValueError(f"src={str(src)!r}: expected one streaming_train_state[_STEP] or streaming_params[_STEP] "
                         f"file in the folder, found {[p.name for p in found]}; pass the file itself")
    return found[0]


def read_ttt_lm_jax(src: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(parameters by '/'-joined key without the ("params", "params") prefix, info) from the official stream.

    info: {"file", "step" (or None), "skipped" (number of non-parameter entries), "dtypes"}.
    """
    import msgpack
    from flax.serialization import msgpack_restore

    path = _find_stream(Path(src).expanduser())
    refuse_pickle(path, "src (ttt-lm-jax checkpoint)")
    size = path.stat().st_size
    params, dtypes, step, skipped = {}, set(), None, 0
    bad = f"src={str(path)!r} is not a complete ttt-lm-jax streaming checkpoint"
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, read_size=1 << 24, max_buffer_size=0, raw=False, strict_map_key=False)
        while True:
            try:
                n = unpacker.read_array_header()
            except msgpack.OutOfData:
                break
            except Exception as e:  # noqa: BLE001 - msgpack raises several kinds on garbage
                raise ValueError(f"{bad}: corrupted entry at byte {unpacker.tell()} ({type(e).__name__})") from None
            try:
                if n != 2:
                    raise ValueError(f"an entry is an array of {n} items, not a (key, value) pair")
                key = unpacker.unpack()
                if not (isinstance(key, list) and key and all(isinstance(k, str) for k in key)):
                    raise ValueError(f"an entry's key is {key!r}, not a list of strings")
                if key[:2] == ["params", "params"]:
                    key = key[2:]
                elif key[0] not in ("model", "lm_head"):  # step, opt_state, ...: skipped without decoding
                    if key == ["step"]:
                        step = unpacker.unpack()
                    else:
                        unpacker.skip()
                        skipped += 1
                    continue
                value = msgpack_restore(unpacker.unpack())
            except msgpack.OutOfData:
                raise ValueError(f"{bad}: the file ends inside an entry (truncated at {size} bytes)") from None
            except ValueError as e:
                raise ValueError(f"{bad}: {e}") from None
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{bad}: corrupted entry before byte {unpacker.tell()} ({type(e).__name__}: "
                                 f"{e})") from None
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{bad}: entry {'/'.join(key)} holds a {type(value).__name__}, not an array")
            name = "/".join(key)
            if name in params:
                raise ValueError(f"{bad}: entry {name} occurs twice")
            params[name] = value
            dtypes.add(value.dtype.name)
        if unpacker.tell() != size:
            raise ValueError(f"{bad}: {size - unpacker.tell()} trailing bytes after the last entry")
    if not params:
        raise ValueError(f"{bad}: no parameter entries (expected keys under ('params', 'params', ...))")
    if isinstance(step, bytes):  # to_bytes(int) is itself a msgpack blob
        step = msgpack_restore(step)
    info = {"file": str(path), "step": None if step is None else int(np.asarray(step)), "skipped": skipped,
            "dtypes": sorted(dtypes)}
    return params, info


def _layer_keys(params: dict, prefix: str, source: str) -> dict[int, set[str]]:
    layers: dict[int, set[str]] = {}
    for k in params:
        if k.startswith(prefix):
            idx, _, rest = k[len(prefix):].partition("/" if prefix.endswith("/") else ".")
            if not idx.isdigit():
                raise ValueError(f"{source}: unknown key {k}")
            layers.setdefault(int(idx), set()).add(rest)
    if not layers:
        raise ValueError(f"{source}: no layers (no keys under {prefix!r})")
    if sorted(layers) != list(range(len(layers))):
        raise ValueError(f"{source}: layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
    return layers


def infer_ttt_lm_jax_config(params: dict[str, np.ndarray], *, source: str = "ttt-lm-jax checkpoint",
                            ttt_base_lr: float | None = None, rope_theta: float = 10000.0, norm_eps: float = 1e-6,
                            max_seq_len: int = 2048) -> ModelConfig:
    """ModelConfig from the official parameter names and shapes (ttt-math.md §8)."""
    def shape(k):
        if k not in params:
            raise ValueError(f"{source}: missing key {k}")
        return tuple(params[k].shape)

    if len(shape("model/wte/embedding")) != 2:
        raise ValueError(f"{source}: model/wte/embedding has shape {shape('model/wte/embedding')}; expected [V, D]")
    V, D = shape("model/wte/embedding")
    layers = _layer_keys(params, "model/h/", source)
    kinds, flags, heads, K, ffn, width = [], set(), set(), set(), set(), set()
    for i, keys in sorted(layers.items()):
        p = f"model/h/{i}/"
        smb = {k.split("/", 1)[1] for k in keys if k.startswith("seq_modeling_block/")}
        if "ttt_norm/scale" in smb:
            kinds.append("ttt_mlp" if "ttt_dense_1" in smb else "ttt_linear")
            H, F = shape(p + "seq_modeling_block/ttt_norm/scale")
            heads.add((H, F))
            K.add(shape(p + "seq_modeling_block/learnable_token_idx")[0])
            flags.add(("conv_q/kernel" in smb, "wg/kernel" in smb, "conv/conv1/kernel" in keys))
            if "conv_q/kernel" in smb:
                width.add(shape(p + "seq_modeling_block/conv_q/kernel")[0])
        elif {"wq/kernel", "wk/kernel", "wv/kernel", "wo/kernel"} <= smb:
            if "conv/conv1/kernel" in keys:
                raise ValueError(f"{source}: layer {i} is attention with a pre-convolution, which HybridLM does not "
                                 f"have")
            kinds.append("attention")
        else:
            raise ValueError(f"{source}: layer {i} is neither a TTT layer nor attention (keys {sorted(smb)[:6]})")
        if "conv/conv1/kernel" in keys:
            width.add(shape(p + "conv/conv1/kernel")[0])
        ffn.add(shape(p + "feed_forward/w1/kernel")[-1])
    if len(flags) > 1:
        raise ValueError(f"{source}: TTT layers differ in (q/k conv, gate, pre-conv) {sorted(flags)}; HybridLM "
                         f"uses one setting for all TTT layers")
    for what, vals in (("heads x head width", heads), ("mini-batch size", K), ("FFN width", ffn),
                       ("conv width", width)):
        if len(vals) > 1:
            raise ValueError(f"{source}: layers differ in {what}: {sorted(vals)}")
    share_qk, use_gate, pre_conv = flags.pop() if flags else (False, False, False)
    n_heads = heads.pop()[0] if heads else None
    if n_heads is None:  # attention only: heads are not visible in the shapes
        raise ValueError(f"{source}: an attention-only checkpoint does not show its head count; not supported")
    cfg = dict(vocab_size=V, d_model=D, n_layers=len(layers), n_heads=n_heads, ffn_dim=ffn.pop(),
               layer_pattern=_pattern(kinds), mini_batch_size=K.pop() if K else 16,
               conv_width=width.pop() if width else 4, rope_theta=rope_theta, max_seq_len=max_seq_len,
               ttt_base_lr=ttt_base_lr, norm_eps=norm_eps, tie_word_embeddings="lm_head/kernel" not in params,
               **_flags_config(share_qk, use_gate, pre_conv))
    try:
        return ModelConfig(**cfg)
    except ValueError as e:
        raise ValueError(f"{source}: inferred an invalid architecture: {e}") from None


def load_ttt_lm_jax(src: str | os.PathLike, *, ttt_base_lr: float | None = None, rope_theta: float = 10000.0,
                    norm_eps: float = 1e-6, max_seq_len: int = 2048, dtype=None):
    """(model, config, info) from an official ttt-lm-jax streaming checkpoint (file or folder).

    ttt_base_lr: None is the official default per learner (1.0 TTT-Linear, 0.1 TTT-MLP).
    """
    params, info = read_ttt_lm_jax(src)
    source = info["file"]
    cfg = infer_ttt_lm_jax_config(params, source=source, ttt_base_lr=ttt_base_lr, rope_theta=rope_theta,
                                  norm_eps=norm_eps, max_seq_len=max_seq_len)
    ours = map_to_ours(params, cfg, "ttt-lm-jax", source=source)
    return build_model(cfg, ours, source=source, dtype=dtype), cfg, info


# --- the ttt-lm-pytorch port (safetensors) --------------------------------------------------------------------------

# TTTConfig's defaults (ttt-lm-pytorch ttt.py): a key missing from config.json takes these.
PORT_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 24,
    "num_attention_heads": 32, "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "rope_theta": 10000.0, "use_gate": False, "share_qk": False,
    "ttt_layer_type": "linear", "ttt_base_lr": 1.0, "mini_batch_size": 16, "pre_conv": False, "conv_kernel": 4,
}
SAFETENSORS_FILE = "model.safetensors"


def _port_folder(src: Path) -> tuple[Path, Path | None]:
    """(model.safetensors, config.json or None) of a folder, or of a .safetensors file with its folder."""
    if not src.exists():
        raise ValueError(f"src={str(src)!r}: no such file or folder")
    if src.is_dir():
        st = src / SAFETENSORS_FILE
        if not st.is_file():
            others = sorted(p.name for p in src.iterdir())
            raise ValueError(f"src={str(src)!r}: no {SAFETENSORS_FILE} in the folder (found {others[:8]}); "
                             f"sharded or .bin checkpoints are not supported")
        cfg = src / "config.json"
    else:
        st, cfg = src, src.parent / "config.json"
    return st, (cfg if cfg.is_file() else None)


def port_config_to_ours(port: dict, *, source: str) -> ModelConfig:
    """ModelConfig from the port's config.json (missing keys: TTTConfig defaults)."""
    if not isinstance(port, dict):
        raise ValueError(f"{source}: config.json is not a JSON object")
    if port.get("model_type", "ttt") != "ttt":
        raise ValueError(f"{source}: model_type={port.get('model_type')!r}; expected 'ttt' (TTTForCausalLM)")
    c = {**PORT_DEFAULTS, **port}
    if c["hidden_act"] != "silu":
        raise ValueError(f"{source}: hidden_act={c['hidden_act']!r}; HybridLM's SwiGLU uses 'silu'")
    kind = {"linear": "ttt_linear", "mlp": "ttt_mlp"}.get(c["ttt_layer_type"])
    if kind is None:
        raise ValueError(f"{source}: ttt_layer_type={c['ttt_layer_type']!r}; expected 'linear' or 'mlp'")
    flags = {k: c[k] for k in ("share_qk", "use_gate", "pre_conv", "tie_word_embeddings")}
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise ValueError(f"{source}: {k}={v!r}; expected true or false")
    try:
        return ModelConfig(vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layers=c["num_hidden_layers"],
                           n_heads=c["num_attention_heads"], ffn_dim=c["intermediate_size"], layer_pattern=(kind,),
                           mini_batch_size=c["mini_batch_size"], conv_width=c["conv_kernel"],
                           rope_theta=float(c["rope_theta"]), max_seq_len=c["max_position_embeddings"],
                           ttt_base_lr=float(c["ttt_base_lr"]), norm_eps=float(c["rms_norm_eps"]),
                           tie_word_embeddings=flags["tie_word_embeddings"],
                           **_flags_config(flags["share_qk"], flags["use_gate"], flags["pre_conv"]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: config.json describes an invalid architecture: {e}") from None


def ours_to_port_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """The port's config.json for our config (ValueError for what the port cannot express)."""
    kinds = set(cfg.layer_kinds)
    if "attention" in kinds or len(kinds) != 1:
        raise ValueError(f"config.layer_pattern={cfg.layer_pattern}: the ttt-lm-pytorch port has one TTT layer kind "
                         f"for all layers and no attention layers")
    kind = kinds.pop()
    if cfg.sliding_window is not None:
        raise ValueError("config.sliding_window is set; the port has no attention layers to apply it to")
    return {
        "architectures": ["TTTForCausalLM"], "model_type": "ttt", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_word_embeddings, "rope_theta": cfg.rope_theta,
        "use_gate": cfg.has_gate, "share_qk": cfg.has_qk_conv, "pre_conv": cfg.has_pre_conv,
        "ttt_layer_type": {"ttt_linear": "linear", "ttt_mlp": "mlp"}[kind], "ttt_base_lr": cfg.base_lr(kind),
        "mini_batch_size": cfg.mini_batch_size, "conv_kernel": cfg.conv_width, "use_cache": False,
        "torch_dtype": torch_dtype,
    }


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as numpy (bf16 via ml_dtypes); ValueError on a damaged file."""
    from safetensors import SafetensorError, safe_open

    refuse_pickle(path, "src (safetensors file)")
    try:
        out = {}
        with safe_open(str(path), framework="flax") as f:
            for k in f.keys():
                out[k] = np.asarray(f.get_tensor(k))
        return out
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"src={str(path)!r} is not a readable safetensors file ({e})") from None


def load_safetensors(src: str | os.PathLike, *, dtype=None):
    """(model, config, info) from a ttt-lm-pytorch port folder (config.json + model.safetensors)."""
    st, cfg_file = _port_folder(Path(src).expanduser())
    source = str(st)
    if cfg_file is None:
        raise ValueError(f"src={str(src)!r}: no config.json next to {st.name}; the port's architecture is in it")
    try:
        port = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    cfg = port_config_to_ours(port, source=str(cfg_file))
    arrays = read_safetensors(st)
    ignore = ("lm_head.weight",) if cfg.tie_word_embeddings else ()  # tied: HF uses the embedding
    ours = map_to_ours(arrays, cfg, "port", source=source, ignore=ignore)
    info = {"file": source, "dtypes": sorted({a.dtype.name for a in arrays.values()})}
    return build_model(cfg, ours, source=source, dtype=dtype), cfg, info


def export_safetensors(model, config: ModelConfig, dst: str | os.PathLike, *, dtype: str = "float32",
                       overwrite: bool = False) -> Path:
    """Write `model` as a ttt-lm-pytorch port folder (config.json + model.safetensors), atomically."""
    from safetensors.numpy import save_file

    from ttc_jax.checkpoints.store import _replace_dir, atomic_dir

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r}; expected float32, bfloat16 or float16")
    port_cfg = ours_to_port_config(config, torch_dtype=dtype)
    out = Path(dst).expanduser()
    if out.exists() and not overwrite:
        raise ValueError(f"dst={str(out)!r} already exists; pass overwrite=True to replace it")
    ours = model_params(model)
    tensors = {}
    for foreign, (name, kind) in N.name_map(config.n_layers, "port").items():
        if name in ours:
            tensors[foreign] = np.ascontiguousarray(N.from_ours(ours[name], kind, "port"))
    if dtype == "bfloat16":
        import ml_dtypes
        tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    elif dtype == "float16":
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    tmp = atomic_dir(out)
    try:
        if dtype == "bfloat16":  # safetensors.numpy has no bf16; the flax writer does
            import jax.numpy as jnp
            from safetensors.flax import save_file as save_flax
            save_flax({k: jnp.asarray(v) for k, v in tensors.items()}, str(tmp / SAFETENSORS_FILE),
                      metadata={"format": "pt"})
        else:
            save_file(tensors, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(port_cfg, indent=2) + "\n")
        _replace_dir(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
