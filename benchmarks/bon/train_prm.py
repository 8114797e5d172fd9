"""Train a PRM (or ORM) for the arithmetic task, initialised from the policy, and measure held-out AUROC.

  nice -n 10 .venv/bin/python benchmarks/bon/train_prm.py --policy /work/coord/bon_models2/policy \
      --out /work/coord/bon_models2/prm --kind prm --data /work/coord/bon_models2/prm_data.jsonl --minutes 15

Data (the diagnosis in benchmarks/results/bon/README.md explains the mix):
- policy samples: `--samples` completions per training problem (seeds >= 5000; `ttc best-of-n`'s held-out
  prompts excluded), exact step labels (or Monte-Carlo with --labels mc); written to / reused from --data;
- a synthetic stream, `--synthetic` of each batch: the reference solution or a corrupted one
  (`corrupt_steps`: one wrong step, continued consistently), half each, on the same training prompts.
  Without it the labels are almost all 0 and the positives are only the references, so the model
  learns "reference-looking vs sampled" instead of checking the arithmetic.
A slice of the problems (--heldout-problems) is kept out of training: the step AUROC on its policy samples
and on reference / corrupted solutions of its prompts is measured at the end and stored in the checkpoint.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.nn.prm import RewardModel
from ttc_jax.search import checkpoint
from ttc_jax.search.diagnostics import auroc
from ttc_jax.search.lm import Policy, TextCodec
from ttc_jax.search.training import reward_batch, train_reward
from ttc_jax.tasks import arithmetic as A

p = argparse.ArgumentParser()
p.add_argument("--policy", required=True, help="policy: .npz path prefix, checkpoint folder or shipped name")
p.add_argument("--out", required=True)
p.add_argument("--kind", default="prm", choices=["prm", "orm"])
p.add_argument("--labels", default="exact", choices=["exact", "mc"])
p.add_argument("--rollouts", type=int, default=4)
p.add_argument("--problems", type=int, default=600, help="training problems sampled by the policy")
p.add_argument("--heldout-problems", type=int, default=100)
p.add_argument("--samples", type=int, default=8)
p.add_argument("--weights", default="easy=0.4,medium=0.45,hard=0.15", help="level mix of the problems")
p.add_argument("--synthetic", type=float, default=0.5)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--length", type=int, default=80)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--minutes", type=float, default=15)
p.add_argument("--init", default="policy", choices=["policy", "random"])
p.add_argument("--resume", default=None, help="continue training this reward-model .npz checkpoint (instead of --init)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--data", default=None, help="write / reuse the labelled policy samples as JSONL here")
a = p.parse_args()

codec = TextCodec(A.SEP, A.EOS, A.PAD)
policy = checkpoint.load_policy(a.policy)
rng = np.random.default_rng(a.seed + 5000)
t0 = time.time()
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


probs = problems(a.problems + a.heldout_problems, 5000)
heldout_set = {q.prompt for q in probs[a.problems:]}
if a.synthetic >= 1.0:
    rows = []  # synthetic stream only (e.g. a first phase before the final policy exists)
elif a.data and os.path.exists(a.data):
    rows = A.load_step_jsonl(a.data)
    print(f"loaded {len(rows)} labelled samples from {a.data}", flush=True)
else:
    pol = Policy(policy, codec, temperature=1.0, max_new_tokens=64)
    texts, fins, _ = pol.sample_pool([q.prompt for q in probs], a.samples, rng)
    print(f"sampled {len(probs)}x{a.samples} in {time.time() - t0:.0f}s", flush=True)
    rows = []
    for q, row, frow in zip(probs, texts, fins):
        for c, f in zip(row, frow):
            steps = A.split_steps(c)
            if not steps or not f:
                continue  # unfinished or empty completions are not kept
            if a.labels == "exact":
                labels = A.exact_step_labels(q.prompt, c)
            else:
                labels = A.mc_step_labels(q.prompt, c, lambda pr, pre: pol.sample_pool([pr + pre[0]], a.rollouts,
                                                                                         rng)[0][0])
            rows.append(A.StepExample(q.prompt, tuple(steps), tuple(labels)))
    if a.data:
        A.save_step_jsonl(a.data, rows)


def as_example(e: A.StepExample):
    """(prompt, steps, labels, finished) for reward_batch; an ORM's labels are final-answer correctness."""
    if a.kind == "orm":
        ok = float(A.verify_answer(e.prompt, "".join(s + "\n" for s in e.steps)))
        return e.prompt, list(e.steps), [ok] * len(e.steps), True
    return e.prompt, list(e.steps), list(e.labels), True


train = [as_example(e) for e in rows if e.prompt not in heldout_set]
test = [as_example(e) for e in rows if e.prompt in heldout_set]
train_prompts = [q.prompt for q in probs[: a.problems]]
acc = np.mean([A.verify_answer(e[0], "".join(s + "\n" for s in e[1])) for e in train]) if train else float("nan")
lab = np.concatenate([e[2] for e in train]) if train else np.zeros(1)
print(f"{len(train)} training samples (final answer right {acc:.3f}; step labels {lab.size}, positive "
      f"{lab.mean():.3f}), {len(test)} held-out ({time.time() - t0:.0f}s)", flush=True)


def synthetic(prompt, r):
    q = A.parse_prompt(prompt)
    steps = q.steps if r.random() < 0.5 else A.corrupt_steps(q, r)
    labels = A.exact_step_labels(q.prompt, "".join(s + "\n" for s in steps))
    if a.kind == "orm":
        labels = [float(all(labels))] * len(steps)
    return q.prompt, steps, labels, True


rm = RewardModel(policy.cfg, separator=A.SEP, kind=a.kind, rngs=nnx.Rngs(a.seed))
if a.resume:
    checkpoint.load_into(a.resume, rm)
elif a.init == "policy":
    nnx.update(rm.backbone, nnx.state(policy, nnx.Param))


def batches(i):
    ex = [synthetic(train_prompts[int(rng.integers(len(train_prompts)))], rng) if rng.random() < a.synthetic
          else train[int(rng.integers(len(train)))] for _ in range(a.batch)]
    return reward_batch(ex, a.length, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind=a.kind, rng=rng, max_left_pad=16)


hist = train_reward(rm, batches, steps=a.steps, lr=a.lr, time_limit_s=a.minutes * 60,
                    log=lambda m: print(m, flush=True))
logits = nnx.jit(lambda m, x: m.logits(x))


def heldout_auroc(examples):
    preds, labs = [], []
    for c0 in range(0, len(examples), 64):
        part = list(examples[c0:c0 + 64])
        n = len(part)
        part += [part[-1]] * (64 - n)
        x, y, w = reward_batch(part, a.length, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind=a.kind)
        s = np.asarray(jax.nn.sigmoid(logits(rm, jnp.asarray(x))))
        preds.append(s[:n][w[:n] > 0])
        labs.append(y[:n][w[:n] > 0])
    preds, labs = np.concatenate(preds), np.concatenate(labs)
    return {"auroc": auroc(preds, labs), "n": int(labs.size), "positive": float(labs.mean()),
            "mean_score_positive": float(preds[labs >= 0.5].mean()) if (labs >= 0.5).any() else None,
            "mean_score_negative": float(preds[labs < 0.5].mean()) if (labs < 0.5).any() else None}


srng = np.random.default_rng(123)
evals = {"policy_samples": heldout_auroc(test) if test else {"auroc": None},
         "reference_and_corrupted": heldout_auroc([synthetic(q, srng) for q in sorted(heldout_set) for _ in (0, 1)])}
print("held-out", json.dumps(evals), flush=True)
checkpoint.save(a.out, rm, {"separator": A.SEP, "kind": a.kind, "labels": a.labels, "args": vars(a),
                            "history": hist, "n_train_samples": len(train), "heldout": evals,
                            "train_seconds": time.time() - t0})
print("saved", a.out, flush=True)
