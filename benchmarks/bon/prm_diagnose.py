"""PRM diagnosis: train a reward model briefly under one recipe and measure step AUROC on held-out problems.

  nice -n 10 .venv/bin/python benchmarks/bon/prm_diagnose.py --policy /work/coord/bon_models/policy0 \
      --data /work/coord/bon_models/prm_data.jsonl --steps 300 --synthetic 0.5 --tag synth

Data: the labelled policy samples of a `train_prm.py --data` JSONL, split 80/20 by prompt; the held-out
AUROC counts only the policy's own samples (the reference and the corrupted rows train_prm adds are left out).
--eval-only PATH scores an existing reward-model checkpoint instead of training.
"""

import argparse
import json
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.nn.prm import RewardModel
from ttc_jax.search import checkpoint
from ttc_jax.search.diagnostics import auroc
from ttc_jax.search.training import reward_batch, train_reward
from ttc_jax.tasks import arithmetic as A

p = argparse.ArgumentParser()
p.add_argument("--policy", required=True)
p.add_argument("--data", required=True)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--length", type=int, default=80)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--synthetic", type=float, default=0.0, help="fraction of each batch: reference or corrupted solutions")
p.add_argument("--init", default="policy", choices=["policy", "random"])
p.add_argument("--eval-only", default=None)
p.add_argument("--tag", default="")
p.add_argument("--out", default=None, help="append a JSON line with the result here")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()


def load_policy(path):
    if path.endswith((".npz", ".json")) or not __import__("os").path.isdir(path):
        return checkpoint.load_policy(path)
    import ttc_jax
    return ttc_jax.from_pretrained(path)[0]


rows = A.load_step_jsonl(a.data)
policy_rows, prev_ref = [], False
for e in rows:  # train_prm.py writes per problem: samples, then the reference, then one corrupted solution
    is_ref = list(e.steps) == A.parse_prompt(e.prompt).steps and all(v == 1.0 for v in e.labels)
    if not is_ref and not prev_ref:
        policy_rows.append(e)
    prev_ref = is_ref
held = lambda e: zlib.crc32(e.prompt.encode()) % 5 == 0
train = [e for e in policy_rows if not held(e)]
test = [e for e in policy_rows if held(e)]
train_probs = sorted({e.prompt for e in train})
lab = np.concatenate([e.labels for e in train])
print(f"policy rows {len(policy_rows)} (train {len(train)}, held-out {len(test)}); train step labels: "
      f"{lab.size} steps, positive {lab.mean():.3f}", flush=True)

policy = load_policy(a.policy)
if a.eval_only:
    rm = checkpoint.load_reward(a.eval_only)
else:
    rm = RewardModel(policy.cfg, separator=A.SEP, kind="prm", rngs=nnx.Rngs(a.seed))
    if a.init == "policy":
        nnx.update(rm.backbone, nnx.state(policy, nnx.Param))
rng = np.random.default_rng(a.seed + 7)


def synthetic():
    q = A.parse_prompt(train_probs[int(rng.integers(len(train_probs)))])
    steps = q.steps if rng.random() < 0.5 else A.corrupt_steps(q, rng)
    return q.prompt, steps, A.exact_step_labels(q.prompt, "".join(s + "\n" for s in steps)), True


def batches(i):
    ex = []
    for _ in range(a.batch):
        if rng.random() < a.synthetic:
            ex.append(synthetic())
        else:
            e = train[int(rng.integers(len(train)))]
            ex.append((e.prompt, list(e.steps), list(e.labels), True))
    return reward_batch(ex, a.length, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind="prm", rng=rng, max_left_pad=16)


t0 = time.time()
hist = [] if a.eval_only else train_reward(rm, batches, steps=a.steps, lr=a.lr, log_every=100,
                                             log=lambda m: print(m, flush=True))
logits = nnx.jit(lambda m, x: m.logits(x))


def step_scores(examples):
    preds, labs = [], []
    for c0 in range(0, len(examples), 64):
        part = [(e[0], list(e[1]), list(e[2]), True) for e in examples[c0:c0 + 64]]
        n = len(part)
        part += [part[-1]] * (64 - n)
        x, y, w = reward_batch(part, a.length, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind="prm")
        s = np.asarray(jax.nn.sigmoid(logits(rm, jnp.asarray(x))))
        preds.append(s[:n][w[:n] > 0])
        labs.append(y[:n][w[:n] > 0])
    return np.concatenate(preds), np.concatenate(labs)


preds, labs = step_scores([(e.prompt, e.steps, e.labels) for e in test])
# balanced synthetic check on the held-out prompts: the reference and one corrupted solution each
srng = np.random.default_rng(123)
syn = []
for pr in sorted({e.prompt for e in test}):
    q = A.parse_prompt(pr)
    for steps in (q.steps, A.corrupt_steps(q, srng)):
        syn.append((pr, steps, A.exact_step_labels(pr, "".join(s + "\n" for s in steps))))
sp, sl = step_scores(syn)
res = {"tag": a.tag, "recipe": {k: v for k, v in vars(a).items() if k not in ("out",)},
       "train_seconds": round(time.time() - t0, 1), "final_bce": hist[-1][1] if hist else None,
       "heldout_steps": int(labs.size), "heldout_positive": float(labs.mean()),
       "step_auroc": auroc(preds, labs), "synthetic_step_auroc": auroc(sp, sl), "score_pos_mean": float(preds[labs >= 0.5].mean()),
       "score_neg_mean": float(preds[labs < 0.5].mean()), "score_range": [float(preds.min()), float(preds.max())]}
print(json.dumps(res), flush=True)
if a.out:
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")
