"""Train a PRM (or ORM) for the arithmetic task on the policy's own samples, initialised from the policy.

  nice -n 10 .venv/bin/python benchmarks/bon/train_prm.py --policy /work/coord/bon_models/policy \
      --out /work/coord/bon_models/prm --kind prm --labels exact --minutes 12

Data: per training problem (seeds disjoint from the held-out ones), `--samples` policy completions
labelled by the exact step verifier (or Monte-Carlo rollouts with --labels mc), plus the reference
solution and one corrupted solution (a wrong result at a random step, continued consistently).
"""

import argparse
import json
import time

import numpy as np
from flax import nnx

from ttc_jax.nn.prm import RewardModel
from ttc_jax.search import checkpoint
from ttc_jax.search.lm import Policy, TextCodec
from ttc_jax.search.training import reward_batch, train_reward
from ttc_jax.tasks import arithmetic as A

p = argparse.ArgumentParser()
p.add_argument("--policy", required=True)
p.add_argument("--out", required=True)
p.add_argument("--kind", default="prm", choices=["prm", "orm"])
p.add_argument("--labels", default="exact", choices=["exact", "mc"])
p.add_argument("--rollouts", type=int, default=4)
p.add_argument("--problems", type=int, default=384)
p.add_argument("--samples", type=int, default=8)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--length", type=int, default=80)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--steps", type=int, default=800)
p.add_argument("--minutes", type=float, default=12)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--data", default=None, help="write / reuse the labelled data as JSONL here")
p.add_argument("--init", default=None, help="continue training this reward-model checkpoint")
a = p.parse_args()

codec = TextCodec(A.SEP, A.EOS, A.PAD)
policy = checkpoint.load_policy(a.policy)
rng = np.random.default_rng(a.seed + 5000)
t0 = time.time()


def corrupt(prob: A.Problem, r: np.random.Generator) -> list[str]:
    steps, acc = [], prob.terms[0]
    bad = int(r.integers(len(prob.ops)))
    for i, (op, t) in enumerate(zip(prob.ops, prob.terms[1:])):
        new = acc + t if op == "+" else acc * t
        if i == bad:
            new = max(0, new + int(r.choice([-1, 1])) * int(r.integers(1, 11)))
        steps.append(f"{acc}{op}{t}={new}")
        acc = new
    return steps


examples = []  # (prompt, steps, labels, finished)
import os
if a.data and os.path.exists(a.data):
    examples = [(e.prompt, list(e.steps), list(e.labels), True) for e in A.load_step_jsonl(a.data)]
    print(f"loaded {len(examples)} examples from {a.data}", flush=True)
else:
    levels = list(A.LEVELS)
    probs = [A.sample_problem(rng, levels[i % len(levels)]) for i in range(a.problems)]
    pol = Policy(policy, codec, temperature=1.0, max_new_tokens=64)
    texts, fins, _ = pol.sample_pool([q.prompt for q in probs], a.samples, rng)
    print(f"sampled {a.problems}x{a.samples} in {time.time() - t0:.0f}s", flush=True)
    acc = np.mean([[A.verify_answer(q.prompt, c) for c in row] for q, row in zip(probs, texts)])
    print(f"policy accuracy on training problems {acc:.3f}", flush=True)

    def rollout(prompt, prefixes):
        t, _, _ = pol.sample_pool([prompt + prefixes[0]], a.rollouts, rng)
        return t[0]

    for q, row, frow in zip(probs, texts, fins):
        for c, f in zip(row, frow):
            steps = A.split_steps(c)
            if not steps:
                continue
            ok = A.verify_answer(q.prompt, c) and f
            if a.labels == "exact":
                labels = A.exact_step_labels(q.prompt, c)
            else:
                labels = A.mc_step_labels(q.prompt, c, rollout)
            if a.kind == "orm":
                labels = [float(ok)] * len(steps)
            examples.append((q.prompt, steps, labels, f))
        examples.append((q.prompt, q.steps, [1.0] * len(q.steps), True))
        bad = corrupt(q, rng)
        lab = A.exact_step_labels(q.prompt, "".join(s + "\n" for s in bad))
        examples.append((q.prompt, bad, lab if a.kind == "prm" else [0.0] * len(bad), True))
    if a.data:
        A.save_step_jsonl(a.data, [A.StepExample(e[0], tuple(e[1]), tuple(e[2])) for e in examples])
pos = np.mean([e[2][-1] for e in examples])
print(f"{len(examples)} labelled completions, last-label mean {pos:.3f} ({time.time() - t0:.0f}s)", flush=True)

rm = RewardModel(policy.cfg, separator=A.SEP, kind=a.kind, rngs=nnx.Rngs(a.seed))
nnx.update(rm.backbone, nnx.state(policy, nnx.Param))  # start from the policy's weights
if a.init:
    checkpoint.load_into(a.init, rm)


def batches(i):
    idx = rng.integers(0, len(examples), a.batch)
    return reward_batch([examples[j] for j in idx], a.length, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind=a.kind,
                        rng=rng, max_left_pad=16)


hist = train_reward(rm, batches, steps=a.steps, lr=a.lr, time_limit_s=a.minutes * 60,
                    log=lambda m: print(m, flush=True))
checkpoint.save(a.out, rm, {"separator": A.SEP, "kind": a.kind, "labels": a.labels, "args": vars(a),
                            "history": hist, "n_examples": len(examples), "train_seconds": time.time() - t0})
print("saved", a.out, flush=True)
