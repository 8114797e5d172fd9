"""A process SIGKILLed in the middle of a checkpoint save resumes from the last complete checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _train_helpers import make_corpus

CHILD = Path(__file__).with_name("sigkill_save_child.py")


@pytest.mark.slow
def test_sigkill_during_save_restores_the_last_complete_checkpoint(tmp_path):
    data = make_corpus(str(tmp_path / "corpus"))
    wd, marker = str(tmp_path / "run"), str(tmp_path / "mid-save")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, str(CHILD), wd, data, marker], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 900
        while not os.path.exists(marker):
            assert child.poll() is None, child.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the child never reached the step-4 save"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    ckpts = os.listdir(os.path.join(wd, "checkpoints"))
    assert "2" in ckpts and "4" not in ckpts
    assert any(n.startswith("4") and "tmp" in n for n in ckpts), ckpts  # killed with step 4 half-committed

    from ttc_jax.train import trainer
    from ttc_jax.train.evaluate import load_run
    assert load_run(wd)[5] == 2
    args = ["n_layers=2", "d_model=32", "n_heads=2", "ffn_dim=64", "mini_batch_size=8", "seq_len=32",
            "batch_size=4", "warmup_steps=2", "log_every=1", "eval_every=100", "eval_batches=1", "save_every=2",
            f"data_dir={data}"]
    s = trainer.train("tiny-ttt-linear", wd, steps=10, overrides=args, progress=False)  # a larger --steps continues
    assert (s["start_step"], s["step"]) == (2, 10)
    ckpts = os.listdir(os.path.join(wd, "checkpoints"))
    assert {"6", "8", "10"} <= set(ckpts) and not any("tmp" in n for n in ckpts), ckpts  # leftovers cleaned up
