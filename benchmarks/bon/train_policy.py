"""Train the best-of-N policy LM on multi-step arithmetic (CPU, time-capped).

  nice -n 10 .venv/bin/python benchmarks/bon/train_policy.py --out /work/coord/bon_models/policy --minutes 20
"""

import argparse
import json
import os
import time

import numpy as np
from flax import nnx

from ttc_jax.nn.config import get_config
from ttc_jax.nn.model import HybridLM
from ttc_jax.search import checkpoint
from ttc_jax.search.training import train_lm
from ttc_jax.tasks import arithmetic as A

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--preset", default="tiny-transformer")
p.add_argument("--d-model", type=int, default=64)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--steps", type=int, default=20000)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--length", type=int, default=64)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--minutes", type=float, default=20)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--init", default=None, help="continue from this checkpoint")
a = p.parse_args()

cfg = get_config(a.preset, d_model=a.d_model, ffn_dim=4 * a.d_model, n_layers=a.layers, max_seq_len=128)
model = HybridLM(cfg, rngs=nnx.Rngs(a.seed))
if a.init:
    checkpoint.load_into(a.init, model)
rng = np.random.default_rng(a.seed + 1000)  # training problems: seeds >= 1000; held-out use seeds < 1000
levels = list(A.LEVELS)


def batches(i):
    probs = [A.sample_problem(rng, levels[int(rng.integers(len(levels)))]) for _ in range(a.batch)]
    return A.lm_batch([(q.prompt, q.solution) for q in probs], a.length, rng, max_left_pad=a.length)


t0 = time.time()
last_save = [t0]


def log(msg):
    print(msg, flush=True)
    if time.time() - last_save[0] > 180:
        checkpoint.save(a.out, model, {"partial": True, "args": vars(a)})
        last_save[0] = time.time()


hist = train_lm(model, batches, steps=a.steps, lr=a.lr, time_limit_s=a.minutes * 60, log=log)
checkpoint.save(a.out, model, {"args": vars(a), "history": hist, "train_seconds": time.time() - t0})
print("saved", a.out, flush=True)
