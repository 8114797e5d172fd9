"""Step-labelled data for `ttc train --objective prm|orm`: the policy's own samples on training problems.

  nice -n 10 .venv/bin/python benchmarks/bon/make_step_data.py --policy arith-policy --out prm_data
      -> prm_data.jsonl (all samples), prm_data_train.jsonl, prm_data_val.jsonl

Problems: `--problems + --heldout-problems` drawn with seed 5000 (levels by --weights; `ttc best-of-n`'s
held-out prompts excluded); the last --heldout-problems are the validation split. Each gets --samples
completions at temperature 1; unfinished or empty ones are dropped. Every row has exact step labels (1 while
every step so far equals the reference, 0 from the first wrong one; --labels mc: Monte-Carlo rollouts, as
in Math-Shepherd) and its "outcome" (the final answer is right). `--reuse FILE` skips sampling and splits an
existing file of such rows (outcomes recomputed by the verifier).
"""

import argparse
import os
import time

import numpy as np

from ttc_jax.search import checkpoint
from ttc_jax.search.lm import Policy, TextCodec
from ttc_jax.tasks import arithmetic as A

p = argparse.ArgumentParser()
p.add_argument("--policy", default="arith-policy", help="checkpoint name or folder (or a .npz path prefix)")
p.add_argument("--out", required=True, help="path prefix of the three JSONL files")
p.add_argument("--labels", default="exact", choices=["exact", "mc"])
p.add_argument("--rollouts", type=int, default=4)
p.add_argument("--problems", type=int, default=600)
p.add_argument("--heldout-problems", type=int, default=100)
p.add_argument("--samples", type=int, default=8)
p.add_argument("--weights", default="easy=0.4,medium=0.45,hard=0.15")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--reuse", default=None, help="split this existing JSONL of sampled rows instead of sampling")
a = p.parse_args()

weights = {k: float(v) for k, v in (kv.split("=") for kv in a.weights.split(","))}


def problems(n, seed):
    held = A.heldout_prompts(1000)
    r, names = np.random.default_rng(seed), list(weights)
    pw = np.asarray([weights[k] for k in names]) / sum(weights.values())
    out = []
    while len(out) < n:
        q = A.sample_problem(r, names[int(r.choice(len(names), p=pw))])
        if q.prompt not in held:
            out.append(q)
    return out


t0 = time.time()
probs = problems(a.problems + a.heldout_problems, 5000)
val_prompts = {q.prompt for q in probs[a.problems:]}
if a.reuse:
    rows = [A.StepExample(e.prompt, e.steps, e.labels) for e in A.load_step_jsonl(a.reuse)]
else:
    policy = checkpoint.load_policy(a.policy)
    pol = Policy(policy, TextCodec(A.SEP, A.EOS, A.PAD), temperature=1.0, max_new_tokens=64)
    rng = np.random.default_rng(a.seed + 5000)
    texts, fins, _ = pol.sample_pool([q.prompt for q in probs], a.samples, rng)
    print(f"sampled {len(probs)}x{a.samples} in {time.time() - t0:.0f}s", flush=True)
    rows = []
    for q, row, frow in zip(probs, texts, fins):
        for c, f in zip(row, frow):
            steps = A.split_steps(c)
            if not steps or not f:
                continue
            if a.labels == "exact":
                labels = A.exact_step_labels(q.prompt, c)
            else:
                labels = A.mc_step_labels(q.prompt, c, lambda pr, pre: pol.sample_pool([pr + pre[0]], a.rollouts,
                                                                                         rng)[0][0])
            rows.append(A.StepExample(q.prompt, tuple(steps), tuple(labels)))
rows = [A.StepExample(e.prompt, e.steps, e.labels, float(A.verify_answer(e.prompt, "".join(s + "\n" for s in e.steps))))
        for e in rows]
train = [e for e in rows if e.prompt not in val_prompts]
val = [e for e in rows if e.prompt in val_prompts]
os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
for suffix, part in (("", rows), ("_train", train), ("_val", val)):
    A.save_step_jsonl(f"{a.out}{suffix}.jsonl", part)
print(f"{len(train)} training rows, {len(val)} validation rows ({time.time() - t0:.0f}s) -> {a.out}_{{train,val}}.jsonl")
