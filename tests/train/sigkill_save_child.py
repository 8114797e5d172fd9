"""Child of test_train_sigkill.py: train with a save every 2 steps, but make orbax's final commit (the
atomic rename of the step-4 temporary folder) hang, so the parent can SIGKILL us mid-save.

argv: workdir data_dir marker_file
"""

from __future__ import annotations

import asyncio
import sys

from orbax.checkpoint._src.path import async_path

from ttc_jax.train import trainer

workdir, data_dir, marker = sys.argv[1:4]
_rename = async_path.rename


async def hanging_rename(src, dst, *a, **kw):
    if str(dst).rstrip("/").endswith("/checkpoints/4"):
        with open(marker, "w") as f:
            f.write(str(src))
        while True:  # the step's data is written, the commit never happens
            await asyncio.sleep(1)
    return await _rename(src, dst, *a, **kw)


async_path.rename = hanging_rename
ARGS = ["n_layers=2", "d_model=32", "n_heads=2", "ffn_dim=64", "mini_batch_size=8", "seq_len=32", "batch_size=4",
        "warmup_steps=2", "log_every=1", "eval_every=100", "eval_batches=1", "save_every=2", f"data_dir={data_dir}"]
trainer.train("tiny-ttt-linear", workdir, steps=8, overrides=ARGS, progress=False)
