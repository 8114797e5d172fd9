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

import jax.numpy as jnp
import numpy as np

from ttc_jax.search import checkpoint
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


def separator_scores(prm, prompt: str, steps_list: list[list[str]]) -> np.ndarray:
    """[len(steps_list), S] PRM scores at the S step separators of each text (same step count)."""
    seqs = [A.encode(prompt + "".join(s + "\n" for s in steps)) for steps in steps_list]
    L = max(len(s) for s in seqs)
    x = np.full((len(seqs), L), A.PAD, np.int32)
    for i, s in enumerate(seqs):
        x[i, L - len(s):] = s
    scores = np.asarray(prm(jnp.asarray(x)))
    return np.stack([scores[i][x[i] == A.SEP][1:] for i in range(len(seqs))])  # [1:]: drop the prompt's "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prm", default="checkpoints/arith-prm")
    ap.add_argument("--levels", default="easy,medium,hard")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    prm = checkpoint.load_reward(a.prm)
    rng = np.random.default_rng(a.seed)
    out = {"prm": a.prm, "problems": a.problems, "seed": a.seed, "levels": {}}
    for lv in a.levels.split(","):
        rows = {"first": [], "last": [], "before_last": []}
        for q in A.heldout_problems(lv, a.problems, a.seed):
            n = len(q.steps)
            d = int(rng.choice([-1, 1]))
            s = separator_scores(prm, q.prompt, [q.steps, altered(q, 0, d), altered(q, n - 1, d)])
            rows["first"].append(s[0, 0] - s[1, 0])
            rows["last"].append(s[0, n - 1] - s[2, n - 1])
            if n > 1:
                rows["before_last"].append(s[0, n - 2] - s[2, n - 2])
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
