"""Checkpoint conversion: a foreign checkpoint -> our folder, our checkpoint -> the port's safetensors folder."""

from __future__ import annotations

import os
from pathlib import Path

SOURCES = ("ttt-lm-jax", "safetensors")


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, source: str, overwrite: bool = False,
            **options) -> Path:
    """Convert a foreign checkpoint to our format at `dst`; returns dst. Nothing is written on failure.

    source: "ttt-lm-jax" (options: ttt_base_lr, rope_theta, norm_eps, max_seq_len) or "safetensors"
    (the ttt-lm-pytorch port's folder; its config.json says everything).
    """
    from ttc_jax.checkpoints.foreign import load_safetensors, load_ttt_lm_jax
    from ttc_jax.checkpoints.store import save_pretrained

    if source not in SOURCES:
        raise ValueError(f"source={source!r}; expected one of {SOURCES}")
    out = Path(dst).expanduser()
    if out.exists() and not overwrite:  # before the (possibly long) read
        raise ValueError(f"dst={str(out)!r} already exists; pass overwrite=True to replace it")
    if source == "ttt-lm-jax":
        model, cfg, info = load_ttt_lm_jax(src, **options)
    else:
        if options:
            raise ValueError(f"options {sorted(options)} apply to --from ttt-lm-jax only; the port's config.json "
                             f"sets them")
        model, cfg, info = load_safetensors(src)
    meta = {"converted_from": source, "source_file": info["file"], "source_dtypes": ", ".join(info["dtypes"])}
    if info.get("step") is not None:
        meta["source_step"] = info["step"]
    card = (f"# Converted {source} checkpoint\n\nConverted by `ttc convert --from {source}` from "
            f"`{info['file']}` (stored as {', '.join(info['dtypes'])}; parameters here are float32).\n\n"
            f"HybridLM: {cfg.n_layers} layers {list(cfg.layer_pattern)}, d_model {cfg.d_model}, heads {cfg.n_heads}, "
            f"vocab {cfg.vocab_size}, mini-batch {cfg.mini_batch_size}, pre_conv {cfg.has_pre_conv}, "
            f"q/k conv {cfg.has_qk_conv}, gate {cfg.has_gate}, tied embeddings {cfg.tie_word_embeddings}, "
            f"ttt_base_lr {cfg.ttt_base_lr if cfg.ttt_base_lr is not None else 'official default per learner'}.\n\n"
            "```python\nimport ttc_jax\nmodel, config = ttc_jax.from_pretrained(PATH)\n```\n")
    return save_pretrained(model, cfg, out, card=card, metadata=meta, overwrite=overwrite)


def export(src, dst: str | os.PathLike, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Our checkpoint (name or folder) -> a ttt-lm-pytorch port folder (config.json + model.safetensors)."""
    from ttc_jax.checkpoints.foreign import export_safetensors
    from ttc_jax.checkpoints.store import from_pretrained

    model, cfg = from_pretrained(src)
    return export_safetensors(model, cfg, dst, dtype=dtype, overwrite=overwrite)
