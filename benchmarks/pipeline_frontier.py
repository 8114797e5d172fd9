"""The composed pipeline against fixed strategies on the accuracy-vs-FLOPs plane, per difficulty level.

    nice -n 10 python benchmarks/pipeline_frontier.py --problems 60 --out benchmarks/results/adapt/pipeline

Held-out arithmetic problems (seed 1: not the seed-0 problems the curves were measured on), the shipped
arith-policy and arith-prm, the measured curves of benchmarks/results/bon/curves.json. Methods:
- pipeline, cap per query: probe 4 samples (+ PRM) -> bin -> the best measured (rule, N) within the cap;
- pipeline, planned average: `plan_average` spreads an average budget over the bins (Snell et al.'s
  compute-optimal setting), each query follows its predicted bin's allocation;
  "(PRM)": difficulty = mean last-step PRM score of the probes; "(policy only)": the probes' agreement;
- fixed: N = 1; majority of 4 and 16; weighted best-of-16 with the PRM (same ledger accounting, no probe);
- fixed beam search (width 4, N = 4, 16, PRM-guided, weighted selection; `--beam-problems P` adds it to an
  existing results.json): the first P of the same problems, FLOPs from the curves' beam cost model.
FLOPs are each query's ledger (executed computations); accuracy per true level. Writes results.json,
frontier.png, and the choices the pipeline made.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import jax
import numpy as np

from ttc_jax.pipeline import Pipeline, PipelineConfig
from ttc_jax.scaling.curves import curves_from_dict
from ttc_jax.search import checkpoint
from ttc_jax.search.lm import TextCodec
from ttc_jax.tasks import arithmetic as A

FIXED = (("N=1", "majority", 1), ("majority@4", "majority", 4), ("majority@16", "majority", 16),
         ("weighted BoN@16 (PRM)", "weighted_best_of_n_prm", 16))


def answer_fn(text):
    return A.normalise_answer(A.final_answer(text))


def run(args) -> dict:
    with open(args.curves) as f:
        curves = curves_from_dict(json.load(f))
    policy = checkpoint.load_policy(args.policy)
    prm = checkpoint.load_reward(args.prm)
    codec = TextCodec(A.SEP, A.EOS, A.PAD)
    cfg = PipelineConfig(probe_n=args.probe_n, max_new_tokens=args.max_new_tokens)
    with_prm = Pipeline(policy, codec, answer_fn, curves, prm=prm, config=cfg)
    no_prm = Pipeline(policy, codec, answer_fn, curves, config=cfg)
    calib = [q.prompt for lv in A.LEVELS for q in A.sample_problems(10_000, lv, args.calibrate)]
    t0 = time.time()
    with_prm.calibrate(calib, key=jax.random.key(100))
    no_prm.calibrate(calib, key=jax.random.key(100))
    print(f"calibrated in {time.time() - t0:.0f}s: {with_prm.bins} / {no_prm.bins}", flush=True)
    levels = [lv for lv in args.levels.split(",") if lv]
    problems = {lv: A.heldout_problems(lv, args.problems, seed=1) for lv in levels}
    example = problems[levels[0]][0].prompt
    budgets = [float(b) for b in args.budgets.split(",")]
    out = {"config": vars(args), "bins_prm": with_prm.bins.to_dict(), "bins_policy_only": no_prm.bins.to_dict(),
           "cost_examples": {"one_sample": with_prm.sample_cost(example, 1), "probe_with_prm": with_prm.probe_cost(example),
                             "probe_policy_only": no_prm.probe_cost(example)},
           "methods": {}}

    def record(name, solve, budget=None):
        t = time.time()
        res = {}
        for lv in levels:
            rows = []
            for i, q in enumerate(problems[lv]):
                sol = solve(q.prompt, jax.random.fold_in(jax.random.key(args.seed), i))
                rows.append({"correct": sol.answer == str(q.answer), "flops": sol.ledger.total, "bin": sol.bin,
                             "strategy": sol.choice.strategy, "n": sol.choice.n,
                             "by_component": sol.ledger.by_component()})
            acc = np.array([r["correct"] for r in rows], float)
            res[lv] = {"accuracy": float(acc.mean()), "stderr": float(acc.std(ddof=1) / np.sqrt(len(acc))),
                       "mean_flops": float(np.mean([r["flops"] for r in rows])),
                       "max_flops": float(np.max([r["flops"] for r in rows])),
                       "bins": dict(Counter(r["bin"] for r in rows)),
                       "choices": dict(Counter(f"{r['strategy']}@{r['n']}" for r in rows)),
                       "flops_by_component": {c: float(np.mean([r["by_component"][c] for r in rows]))
                                              for c in rows[0]["by_component"]}}
        allp = [r for lv in levels for r in [res[lv]]]
        entry = {"budget": budget, "levels": res, "wall_s": time.time() - t,
                 "accuracy": float(np.mean([r["accuracy"] for r in allp])),
                 "mean_flops": float(np.mean([r["mean_flops"] for r in allp]))}
        out["methods"].setdefault(name, []).append(entry)
        print(f"{name} budget={budget}: acc {entry['accuracy']:.3f} flops {entry['mean_flops']:.3g} "
              f"({entry['wall_s']:.0f}s) " + " ".join(f"{lv}:{res[lv]['accuracy']:.2f}/{res[lv]['choices']}"
                                                      for lv in levels), flush=True)

    for label, strategy, n in FIXED:
        record(label, lambda p, k, s=strategy, n=n: with_prm.solve_fixed(p, s, n, key=k))
    for b in budgets:  # a hard cap per query: the best measured option that fits
        record("pipeline, cap per query (PRM)", lambda p, k, b=b: with_prm.solve(p, b, key=k), b)
        record("pipeline, cap per query (policy only)", lambda p, k, b=b: no_prm.solve(p, b, key=k), b)
    for pipe, name, avgs in ((with_prm, "pipeline, planned average (PRM)", args.average_prm),
                             (no_prm, "pipeline, planned average (policy only)", args.average_policy)):
        for b in [float(v) for v in avgs.split(",") if v]:
            plan = pipe.plan_average(b, example)
            out.setdefault("plans", {}).setdefault(name, []).append(plan.to_dict())
            print(name, b, [(a.bin, a.option.strategy, a.option.n, a.mix and a.mix.n, round(a.mix_fraction, 2))
                            for a in plan.allocations], flush=True)
            record(name, lambda p, k, pipe=pipe, plan=plan: pipe.solve(p, float("inf"), key=k, plan=plan), b)
    return out


def run_beam(args, out: dict) -> None:
    """Fixed beam search (width 4, N = 4 and 16, PRM `last`, weighted selection) on the first --beam-problems
    problems of each level (the same seed-1 problems); FLOPs from the curves' beam cost model (tree search
    runs outside the ledger)."""
    from ttc_jax.search import tree
    from ttc_jax.search.evaluate import answer_of
    from ttc_jax.search.lm import Policy, RewardScorer

    with open(args.curves) as f:
        cost = json.load(f)["strategies"]["beam_search"]["cost"]
    policy = Policy(checkpoint.load_policy(args.policy), TextCodec(A.SEP, A.EOS, A.PAD),
                    max_new_tokens=args.max_new_tokens)
    prm = RewardScorer(checkpoint.load_reward(args.prm), policy.codec)
    rng = np.random.default_rng(args.seed)
    res = {}
    for lv in [lv for lv in args.levels.split(",") if lv]:
        qs = A.heldout_problems(lv, args.beam_problems, seed=1)
        prompts = [q.prompt for q in qs]
        expand = lambda pids, pre, r, g, prompts=prompts: policy.expand([prompts[i] for i in pids], pre, r, g)
        score = lambda pids, comps, prompts=prompts: prm.score_steps([prompts[i] for i in pids], comps)
        res[lv] = []
        for n in (4, 16):
            t = time.time()
            out_ = tree.beam_search(len(qs), expand, score, answer_of, n=n, m=4,
                                    max_steps=max(len(q.ops) for q in qs) + 2, rng=rng, aggregation="last",
                                    select="weighted")
            ok = np.array([r.selection.answer == str(q.answer) for r, q in zip(out_, qs)], float)
            res[lv].append({"n": n, "accuracy": float(ok.mean()), "stderr": float(ok.std(ddof=1) / np.sqrt(len(ok))),
                            "problems": len(qs), "flops_cost_model": cost["fixed"] + n * cost["per_sample"],
                            "wall_s": time.time() - t})
            print("beam", lv, res[lv][-1], flush=True)
    out["beam_same_problems"] = res


def plot(out: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(next(iter(out["methods"].values()))[0]["levels"])
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4), squeeze=False)
    style = {n: f for n, f in (("pipeline, cap per query (PRM)", "o:"), ("pipeline, cap per query (policy only)", "s:"),
                                ("pipeline, planned average (PRM)", "o-"),
                                ("pipeline, planned average (policy only)", "s-"))}
    for ax, lv in zip(axes[0], levels):
        for name, entries in out["methods"].items():
            x = [e["levels"][lv]["mean_flops"] for e in entries]
            y = [e["levels"][lv]["accuracy"] for e in entries]
            err = [e["levels"][lv]["stderr"] for e in entries]
            ax.errorbar(x, y, yerr=err, fmt=style.get(name, "D"), label=name, capsize=2, ms=5)
        for pt in out.get("beam_same_problems", {}).get(lv, []):
            ax.errorbar(pt["flops_cost_model"], pt["accuracy"], yerr=pt["stderr"], fmt="kx", capsize=2)
            ax.annotate(f"beam N={pt['n']}", (pt["flops_cost_model"], pt["accuracy"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per query (ledger)")
        ax.set_title(lv)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="arith-policy")
    ap.add_argument("--prm", default="arith-prm")
    ap.add_argument("--curves", default="benchmarks/results/bon/curves.json")
    ap.add_argument("--levels", default=",".join(A.LEVELS))
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--calibrate", type=int, default=30)
    ap.add_argument("--budgets", default="1.2e9,2.5e9", help="per-query caps")
    ap.add_argument("--average-prm", default="8e8,1.5e9", help="average budgets for the planned pipeline with the PRM")
    ap.add_argument("--average-policy", default="3e8,5e8,8e8", help="average budgets, policy-only pipeline")
    ap.add_argument("--probe-n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--beam-problems", type=int, default=0,
                    help="only run fixed beam search on this many problems per level and add it to OUT/results.json")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.beam_problems:
        with open(os.path.join(args.out, "results.json")) as f:
            out = json.load(f)
        run_beam(args, out)
    else:
        out = run(args)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    plot(out, os.path.join(args.out, "frontier.png"))
    print(f"wrote {args.out}/results.json, frontier.png")


if __name__ == "__main__":
    main()
