"""Shared pieces of the training tests: a small prepared corpus and a tiny fast config."""

from __future__ import annotations

import os
import shutil
import sysconfig

# a 2-layer tiny TTT-Linear model on 32-token sequences: compiles and steps fast on CPU
TINY = ["n_layers=2", "d_model=32", "n_heads=2", "ffn_dim=64", "mini_batch_size=8",
        "seq_len=32", "batch_size=4", "warmup_steps=3", "lr=1e-2", "log_every=2", "eval_batches=2"]


def make_corpus(root: str, n_files: int = 24) -> str:
    """A prepared corpus (ttc data prepare) from the n smallest stdlib modules over 4 KB, split by file."""
    from ttc_jax.data import prepare_corpus
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted((os.path.getsize(os.path.join(stdlib, f)), f) for f in os.listdir(stdlib)
                   if f.endswith(".py") and os.path.getsize(os.path.join(stdlib, f)) > 4096)[:n_files]
    src = os.path.join(root, "src")
    os.makedirs(src, exist_ok=True)
    for _, f in files:
        shutil.copy(os.path.join(stdlib, f), os.path.join(src, f.replace(".py", ".txt")))
    out = os.path.join(root, "prepared")
    prepare_corpus(src, out, val_fraction=0.2, seed=0)
    return out
