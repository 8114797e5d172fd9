"""Does the PRM check a step's arithmetic? Paired probe on reference solutions of held-out problems.

For each problem, the reference solution and copies in which one step's result is changed by one
(`a+b=c` -> `a+b=c±1`, continued consistently from the changed value, like `corrupt_steps`), at the first
or at the last step. A verifier that checks results scores the reference's step higher than the altered
one at that step's separator. Reported per level and altered step: pairwise accuracy (reference scored
higher; ties count half), mean score gap, and the fraction of exact ties (|gap| < 1e-3), plus the same at
the step before the altered one (where the two texts are identical, so the gap must be 0: a check of the
probe itself).

    .venv/bin/python benchmarks/bon/prm_probe.py --prm checkpoints/arith-prm --problems 200 \
        --out benchmarks/results/bon/prm_probe.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ttc_jax.search import checkpoint
from ttc_jax.search.lm import RewardScorer, TextCodec
from ttc_jax.tasks import arithmetic as A


def altered(problem: A.Problem, at: int, delta: int) -> list[str]:
    """The reference steps with step `at`'s result moved by `delta`, later steps continued from it."""
    steps, acc = [], problem.terms[0]
    for i, (op, t) in enumerate(zip(problem.ops, problem.terms[1:])):
        new = acc + t if op == "+" else acc * t
        if i == at:
            new = new + delta if new + delta >= 0 else new + 1
        steps.append(f"{acc}{op}{t}={new}")
        acc = new
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prm", default="checkpoints/arith-prm")
    ap.add_argument("--levels", default="easy,medium,hard")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    prm = RewardScorer(checkpoint.load_reward(a.prm), TextCodec(A.SEP, A.EOS, A.PAD))  # as `ttc best-of-n` scores
    rng = np.random.default_rng(a.seed)
    out = {"prm": a.prm, "problems": a.problems, "seed": a.seed, "levels": {}}
    for lv in a.levels.split(","):
        problems = A.heldout_problems(lv, a.problems, a.seed)
        prompts, texts = [], []
        for q in problems:  # per problem: the reference, then step 0 and the last step altered
            d = int(rng.choice([-1, 1]))
            for steps in (q.steps, altered(q, 0, d), altered(q, len(q.steps) - 1, d)):
                prompts.append(q.prompt)
                texts.append("".join(st + "\n" for st in steps))
        scores = prm.score_steps(prompts, texts)  # per text, the score at each of its step separators
        rows = {"first": [], "last": [], "before_last": []}
        for i, q in enumerate(problems):
            ref, first, last = scores[3 * i:3 * i + 3]
            n = len(q.steps)
            rows["first"].append(ref[0] - first[0])
            rows["last"].append(ref[n - 1] - last[n - 1])
            if n > 1:
                rows["before_last"].append(ref[n - 2] - last[n - 2])
        res = {}
        for k, g in rows.items():
            g = np.asarray(g)
            res[k] = {"pairwise_accuracy": float(np.mean((g > 1e-3) + 0.5 * (np.abs(g) <= 1e-3))),
                      "mean_gap": float(g.mean()), "tie_fraction": float(np.mean(np.abs(g) <= 1e-3)),
                      "pairs": int(g.size)}
        out["levels"][lv] = res
        print(lv, json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", a.out)


if __name__ == "__main__":
    main()
