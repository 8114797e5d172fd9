"""`ttc best-of-n`: accuracy against N per strategy and difficulty on the arithmetic task.

Writes to the output directory: results.json (accuracy, diagnostics, timing), curves.json (the
planner's `ttc-jax.accuracy-curves/1` with FLOP costs from `ttc_jax.scaling.flops`), and plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from ttc_jax.search.selection import SEARCH_STRATEGIES, STRATEGIES
from ttc_jax.tasks import arithmetic as A


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("best-of-n", help="best-of-N / PRM search accuracy against N on a verifiable task")
    p.add_argument("--task", default="arithmetic", choices=["arithmetic"])
    p.add_argument("--policy", required=True, help="policy checkpoint (path without .npz/.json)")
    p.add_argument("--prm", default=None, help="PRM checkpoint")
    p.add_argument("--orm", default=None, help="ORM checkpoint")
    p.add_argument("--levels", default=",".join(A.LEVELS), help=f"comma list of {list(A.LEVELS)}")
    p.add_argument("--problems", type=int, default=500, help="held-out problems per level")
    p.add_argument("--n", default="1,2,4,8,16,32,64", help="comma list of N")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list of {list(STRATEGIES)}")
    p.add_argument("--search-n", default="4,16", help="N for beam search / DVTS (multiples of --width)")
    p.add_argument("--width", type=int, default=4, help="beam width M (beam search, DVTS)")
    p.add_argument("--search-problems", type=int, default=None, help="problems per level for beam search / DVTS")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def _ints(name: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}={text!r}; expected a comma list of integers") from None


def curves_dict(results: dict, policy_cfg, prm_cfg=None, orm_cfg=None) -> dict:
    """The planner's accuracy-curves JSON for the measured results (equal shares per level)."""
    from ttc_jax.scaling.flops import best_of_n_cost

    levels = results["levels"]
    prompt_len = max(1, round(np.mean([d["mean_prompt_tokens"] for d in levels.values()])))
    sample_len = max(1, round(np.mean([d["mean_completion_tokens"] for d in levels.values()])))
    strategies = {}
    names = sorted({s for d in levels.values() for s in d["accuracy"]})
    for name in names:
        if not all(len(levels[lv]["accuracy"].get(name, ())) >= 2 for lv in levels):
            continue  # the planner fits a power law per curve: at least two N per level
        reward = orm_cfg if name == "best_of_n_orm" else (prm_cfg if ("prm" in name or name in SEARCH_STRATEGIES)
                                                           else None)
        cost = best_of_n_cost(policy_cfg, prompt_len, sample_len, prm_cfg=reward)
        curves = {}
        for lv, d in levels.items():
            ns = sorted(int(n) for n in d["accuracy"][name])
            curves[lv] = {"n": ns, "accuracy": [d["accuracy"][name][str(n)] for n in ns],
                          "num_questions": d["num_search_problems"] if name in SEARCH_STRATEGIES else d["num_problems"]}
        strategies[name] = {"cost": cost.to_dict(), "curves": curves}
    return {"format": "ttc-jax.accuracy-curves/1", "bins": list(levels), "strategies": strategies,
            "note": (f"measured by `ttc best-of-n`; cost = FLOPs per query with prompt_len={prompt_len}, "
                     f"sample_len={sample_len} (level means); beam search / DVTS are costed as N full samples "
                     "plus PRM scoring (their generation budget), an approximation")}


def run(args) -> int:
    from ttc_jax.search import plots
    from ttc_jax.search.evaluate import FORMAT, check_ns, evaluate_level
    from ttc_jax.search.lm import Policy, RewardScorer, TextCodec
    from ttc_jax.search.loading import load_policy_and_rewards

    ns = check_ns(_ints("--n", args.n))
    search_ns = check_ns(_ints("--search-n", args.search_n))
    strategies = [s for s in args.strategies.split(",") if s]
    bad = set(strategies) - set(STRATEGIES)
    if bad:
        raise ValueError(f"--strategies has {sorted(bad)}; expected some of {list(STRATEGIES)}")
    levels = [s for s in args.levels.split(",") if s]
    for lv in levels:
        if lv not in A.LEVELS:
            raise ValueError(f"--levels has {lv!r}; expected some of {list(A.LEVELS)}")
    if args.problems < 1:
        raise ValueError(f"--problems={args.problems}; expected >= 1")
    if set(strategies) & set(SEARCH_STRATEGIES):
        from ttc_jax.search.tree import check_width
        for n in search_ns:
            check_width(n, args.width)
    codec = TextCodec(A.SEP, A.EOS, A.PAD)
    policy_model, prm_rm, orm_rm = load_policy_and_rewards(args.policy, args.prm, args.orm,
                                                           vocab_size=A.VOCAB_SIZE, separator=A.SEP)
    prm = RewardScorer(prm_rm, codec) if prm_rm is not None else None
    orm = RewardScorer(orm_rm, codec) if orm_rm is not None else None
    if prm is None:
        strategies = [s for s in strategies if "prm" not in s and s not in SEARCH_STRATEGIES]
    if orm is None:
        strategies = [s for s in strategies if s != "best_of_n_orm"]
    policy = Policy(policy_model, codec, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)

    from tqdm import tqdm
    bar = tqdm(total=len(levels), desc="best-of-n", disable=args.no_progress, file=sys.stderr)
    results = {"format": FORMAT, "task": args.task, "ns": ns, "search_ns": search_ns, "width": args.width,
               "strategies": strategies, "temperature": args.temperature, "seed": args.seed,
               "policy": args.policy, "prm": args.prm, "orm": args.orm, "levels": {}}
    t0 = time.time()
    for i, lv in enumerate(levels):
        problems = A.heldout_problems(lv, args.problems, args.seed)
        results["levels"][lv] = evaluate_level(
            policy, prm, orm, problems, ns=ns, strategies=strategies, search_ns=search_ns, m=args.width,
            search_problems=args.search_problems, rng=rng,
            progress=lambda s, lv=lv: bar.set_postfix_str(f"{lv}: {s}"))
        bar.update(1)
    bar.close()
    results["wall_seconds"] = time.time() - t0
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    curves = curves_dict(results, policy_model.cfg, prm.model.cfg if prm else None, orm.model.cfg if orm else None)
    with open(os.path.join(args.out, "curves.json"), "w") as f:
        json.dump(curves, f, indent=1)
    plots.write_all(results, args.out)
    for lv, d in results["levels"].items():
        row = ", ".join(f"{k} {v[str(max(int(n) for n in v))]:.3f}" for k, v in d["accuracy"].items())
        print(f"{lv}: {row}")
    print(f"wrote {args.out}/results.json, curves.json, accuracy_vs_n.png, diagnostics.png")
    return 0
