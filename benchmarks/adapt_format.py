"""Arithmetic under a step-format shift, with vs without test-time adaptation, at matched FLOPs (issue 8, item 4).

The shipped `arith-policy` was trained on `Q:347+52*3\\n347+52=399\\n399*3=1197\\n<EOS>`. Here every query of an
episode comes with k solved demonstrations in a shifted format (`ttc_jax.tasks.formats.SHIFTED`, default
"marker_numbered": prompt marker "A:" and steps numbered "1:347+52=399"). The demonstrations are the
adaptation prefix: `ttt_adapt` trains on them (next-token loss on the solutions, the prompts masked out),
with carry-over snapshots after s = 0, 1, 2, 4, ... steps; from each snapshot `sample_adapted` draws M
samples per test prompt. The test prompt is sampled WITHOUT the demonstrations in context (the policy's
context is 128 bytes). A sample is correct when every line is in the shifted format and the last result is
right (`StepFormat.verify`); "lenient" counts the right final number in any format.

FLOPs per query (`ttc_jax.scaling.allocate`): a sample costs c0 = sample_flops(prompt, mean completion
length); adaptation costs A(s) = ttt_adapt_flops(k demonstrations, s steps), charged in full to every query
(as if each query came with its own demonstrations). Best-of-N at N samples after s steps costs A(s) + N c0
(one adapted copy shared by the N samples); the per-sample-copy recipe of `allocate` costs N (c0 + A(s)).

    python benchmarks/adapt_format.py --smoke                      # tiny, ~1 min
    nice -n 10 python benchmarks/adapt_format.py --dev             # choose scope / lr on the dev split
    nice -n 10 python benchmarks/adapt_format.py --scope all --lr 3e-4 --time-cap-min 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ttc_jax  # noqa: E402
from ttc_jax.adapt import sample_adapted, ttt_adapt  # noqa: E402
from ttc_jax.scaling.allocate import fit_adaptation_gain, sample_flops, ttt_adapt_flops  # noqa: E402
from ttc_jax.scaling.passk import pass_at_k  # noqa: E402
from ttc_jax.search.selection import majority, subset_accuracy  # noqa: E402
from ttc_jax.tasks import arithmetic as A  # noqa: E402
from ttc_jax.tasks.formats import SHIFTED, StepFormat, lenient_answer  # noqa: E402

FORMAT = "ttc-jax.adapt-format/1"
PROMPT_LEN = 32
MAX_NEW = 64


def round_up(x: int, b: int = 16) -> int:
    return -(-x // b) * b


def demo_batch(fmt: StepFormat, demos, length: int):
    """tokens [k, length] (PAD-left, prompt + solution + EOS) and the loss mask on the solution targets."""
    return A.lm_batch([(fmt.prompt(q), fmt.solution(q)) for q in demos], length)


def prompt_batch(fmt: StepFormat, problems) -> np.ndarray:
    rows = [A.encode(fmt.prompt(q)) for q in problems]
    out = np.full((len(rows), PROMPT_LEN), A.PAD, np.int32)
    for i, r in enumerate(rows):
        out[i, PROMPT_LEN - len(r):] = r
    return out


def episode(model, fmt, demos, problems, *, steps, m, m0, scope, lr, optimizer, rng):
    """Per snapshot s: strict / lenient correctness [P, m] ([P, m0] at s = 0), completion lengths, losses."""
    L = round_up(max(len(fmt.prompt(q) + fmt.solution(q)) + 1 for q in demos))
    tok, mask = demo_batch(fmt, demos, L)
    x = prompt_batch(fmt, problems)
    out, state, done = {}, None, 0
    for s in steps:
        r = ttt_adapt(model, tok, mask=mask, steps=s - done, lr=lr, scope=scope, optimizer=optimizer, state=state)
        state, done = r.state, s
        smp = sample_adapted(r, x, n_per_copy=m0 if s == 0 else m, max_new_tokens=MAX_NEW, rng=jax.random.fold_in(rng, s),
                             temperature=1.0, stop_tokens=(A.EOS,), pad_id=A.PAD)
        toks = np.asarray(smp.tokens)
        texts = [[A.decode(t) for t in row] for row in toks]
        out[s] = {"strict": np.array([[fmt.verify(q, t) for t in row] for q, row in zip(problems, texts)]),
                  "lenient": np.array([[lenient_answer(t) == str(q.answer) for t in row]
                                       for q, row in zip(problems, texts)]),
                  "answers": [[fmt.answer(t) for t in row] for row in texts],
                  "truth": [str(q.answer) for q in problems],
                  "length": float(np.mean([[len(t) + 1 for t in row] for row in texts])),
                  "loss": float(np.asarray(r.losses)[-1]), "example": texts[0][0]}
    return out, L


def summarise(level_runs, steps, ns):
    """Accuracy per step count: per-sample strict / lenient with standard errors over problems, majority@N, pass@N."""
    res = {}
    for s in steps:
        strict = np.concatenate([e[s]["strict"] for e in level_runs])
        lenient = np.concatenate([e[s]["lenient"] for e in level_runs])
        answers = sum((e[s]["answers"] for e in level_runs), [])
        truth = sum((e[s]["truth"] for e in level_runs), [])
        P, M = strict.shape
        per_q = strict.mean(1)
        maj = {n: float(np.mean([subset_accuracy(lambda g: majority([a[j] for j in g]).answer == t, M, [n])[n]
                                 for a, t in zip(answers, truth)])) for n in ns if n <= M}
        maj_se = {n: float(np.std([subset_accuracy(lambda g: majority([a[j] for j in g]).answer == t, M, [n])[n]
                                   for a, t in zip(answers, truth)], ddof=1) / math.sqrt(P)) for n in ns if n <= M}
        res[s] = {"p": float(per_q.mean()), "p_se": float(per_q.std(ddof=1) / math.sqrt(P)),
                  "lenient": float(lenient.mean()), "lenient_se": float(lenient.mean(1).std(ddof=1) / math.sqrt(P)),
                  "majority": maj, "majority_se": maj_se,
                  "pass": {n: float(np.mean([pass_at_k(M, int(c), n) for c in strict.sum(1)])) for n in ns if n <= M},
                  "problems": P, "samples": M,
                  "length": float(np.mean([e[s]["length"] for e in level_runs])),
                  "loss": float(np.mean([e[s]["loss"] for e in level_runs]))}
    return res


def run(args):
    model, cfg = ttc_jax.from_pretrained(args.policy)
    fmt = SHIFTED[args.format]
    rng = jax.random.key(args.seed)
    t0, results = time.time(), {}
    split_seed = 1 if args.dev else 0  # dev: held-out seed 1; test: held-out seed 0 (as ttc best-of-n)
    configs = [tuple(c.split(":")) for c in args.dev_configs] if args.dev else [(args.scope, args.optimizer, args.lr)]
    for scope, optimizer, lr in configs:
        lr = float(lr)
        key = f"{scope}:{optimizer}:{lr:g}"
        problems = {lv: A.heldout_problems(lv, args.episodes * args.problems, split_seed) for lv in args.levels}
        runs, lens = {lv: [] for lv in args.levels}, {lv: [] for lv in args.levels}
        last = 0.0
        for e in range(args.episodes):  # episodes outermost: a time cap cuts every level alike
            if time.time() - t0 + last > args.time_cap_min * 60:  # the next episode would end past the cap
                print(f"time cap: stopping {key} before episode {e}", flush=True)
                break
            t_ep = time.time()
            for level in args.levels:
                demos = A.sample_problems(50_000 + 97 * e + 1000 * split_seed + A_LEVEL[level], level, args.k)
                part = problems[level][e * args.problems:(e + 1) * args.problems]
                out, L = episode(model, fmt, demos, part, steps=args.steps, m=args.samples, m0=args.samples0,
                                 scope=scope, lr=lr, optimizer=optimizer,
                                 rng=jax.random.fold_in(rng, 1000 * e + A_LEVEL[level]))
                runs[level].append(out)
                lens[level].append(L)
                print(f"{key} {level} ep {e}: " + " ".join(f"s={s}:{out[s]['strict'].mean():.3f}/"
                                                            f"{out[s]['lenient'].mean():.3f}" for s in args.steps)
                      + f" ({time.time() - t0:.0f}s) e.g. {out[args.steps[-1]]['example']!r}", flush=True)
            last = time.time() - t_ep
        results[key] = {}
        for level in args.levels:
            if not runs[level]:
                continue
            summ = summarise(runs[level], args.steps, args.ns)
            c0 = sample_flops(cfg, PROMPT_LEN, max(1, round(summ[0]["length"])))
            L = round(float(np.mean(lens[level])))  # demonstration rows' padded length, mean over episodes
            results[key][level] = {"curve": {str(s): v for s, v in summ.items()}, "demo_len": L,
                                   "sample_flops": c0,
                                   "adapt_flops": {str(s): ttt_adapt_flops(cfg, L, s, n_sequences=args.k)
                                                   for s in args.steps},
                                   "episodes": len(runs[level])}
    return results, time.time() - t0


A_LEVEL = {name: i for i, name in enumerate(A.LEVELS)}


def matched(level_res, steps, ns, queries_per_episode=1):
    """Accuracy vs FLOPs per query: for every (s, N) measured, majority@N after s steps at A(s) + N c0
    (the demonstrations' adaptation charged to each query); also N (c0 + A(s)) (a copy per sample) and
    A(s) / queries_per_episode + N c0 (one adaptation shared by an episode's queries)."""
    c0 = level_res["sample_flops"]
    pts = []
    for s in steps:
        cur = level_res["curve"][str(s)]
        a = level_res["adapt_flops"][str(s)] if s > 0 else 0.0  # no adaptation: no call at all
        for n, acc in cur["majority"].items():
            pts.append({"steps": s, "n": int(n), "flops": a + int(n) * c0, "flops_per_sample_copies": int(n) * (c0 + a),
                        "flops_amortized": a / queries_per_episode + int(n) * c0,
                        "majority": acc, "majority_se": cur["majority_se"][n], "pass": cur["pass"][n]})
    return pts


def fit_gains(level_runs, steps):
    """Per level: the AdaptationGain fitted on the measured per-sample success up to the best step count
    (at least the first 3 points; the family cannot fall, and past the peak adaptation over-fits the
    demonstrations), with that best step count as the planner's max_steps."""
    gains = {}
    for level, r in level_runs.items():
        p = [r["curve"][str(s)]["p"] for s in steps]
        n = [r["curve"][str(s)]["problems"] * r["curve"][str(s)]["samples"] for s in steps]
        best = int(np.argmax(p))
        upto = max(best + 1, 3)
        try:
            g = fit_adaptation_gain(steps[:upto], np.minimum(p[:upto], 1 - 1e-6), num_questions=n[:upto])
        except ValueError as err:  # reported, not written as a gain
            print(f"no gain for {level}: {err}", flush=True)
            continue
        gains[level] = {"h0": g.h0, "s0": g.s0, "beta": g.beta, "max_steps": int(steps[best]),
                        "fit_steps": list(steps[:upto]), "steps": list(steps), "success": p,
                        "fitted": [g.success(s) for s in steps], "samples_per_point": n,
                        "sample_flops": r["sample_flops"],
                        "step_flops": (r["adapt_flops"][str(steps[-1])] - r["adapt_flops"][str(steps[0])])
                        / max(steps[-1] - steps[0], 1)}
    return gains


def tables(level_runs, steps, queries_per_episode) -> str:
    """Markdown: N = 1 accuracy by step count, and adapted best-of-N against no adaptation at matched FLOPs."""
    lines = ["| level | " + " | ".join(f"s={s}" for s in steps) + " | lenient s=0 / best |",
             "|---|" + "---|" * (len(steps) + 1)]
    for level, r in level_runs.items():
        c = r["curve"]
        best = max(steps, key=lambda s: c[str(s)]["p"])
        lines.append(f"| {level} | " + " | ".join(f"{c[str(s)]['p']:.3f} ± {c[str(s)]['p_se']:.3f}" for s in steps)
                     + f" | {c['0']['lenient']:.3f} / {c[str(best)]['lenient']:.3f} |")
    lines += ["", "| level | no adaptation, N = | " + " | ".join(r0 for r0 in next(iter(level_runs.values()))["curve"]["0"]
                                                       ["majority"]) + " |",
              "|---|---|" + "---|" * len(next(iter(level_runs.values()))["curve"]["0"]["majority"])]
    for level, r in level_runs.items():
        c = r["curve"]["0"]
        lines.append(f"| {level} | majority@N | " + " | ".join(f"{v:.3f}" for v in c["majority"].values()) + " |")
        lines.append(f"| {level} | pass@N (oracle) | " + " | ".join(f"{v:.3f}" for v in c["pass"].values()) + " |")
    lines += ["", "| level | adapted: s, N | FLOPs/query | majority@N | no adaptation, largest measured N <= FLOPs / c0"
              ": N, majority@N |"
              " A(s) shared by the episode: no-adapt N, majority@N |", "|---|---|---|---|---|---|"]
    for level, r in level_runs.items():
        pts = matched(r, steps, [], queries_per_episode)
        base = sorted((p for p in pts if p["steps"] == 0), key=lambda p: p["n"])

        def best_base(flops):
            ok = [p for p in base if p["flops"] <= flops * (1 + 1e-9)]
            p = ok[-1] if ok else base[0]
            more = " (largest N measured)" if p is base[-1] and flops > base[-1]["flops"] * 1.5 else ""
            return f"{p['n']}, {p['majority']:.3f} ± {p['majority_se']:.3f}{more}"

        for s in steps[1:]:
            for p in (p for p in pts if p["steps"] == s and p["n"] in (1, max(q["n"] for q in pts if q["steps"] == s))):
                lines.append(f"| {level} | {s}, {p['n']} | {p['flops']:.3g} | {p['majority']:.3f} ± "
                             f"{p['majority_se']:.3f} | {best_base(p['flops'])} | {best_base(p['flops_amortized'])} |")
    return "\n".join(lines)


def plot(level_runs, steps, path, queries_per_episode):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    levels = list(level_runs)
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(4.2 * (len(levels) + 1), 3.6))
    for ax, level in zip(axes, levels):
        pts = matched(level_runs[level], steps, [], queries_per_episode)
        for s in steps:
            q = sorted((p for p in pts if p["steps"] == s), key=lambda p: p["flops"])
            line = ax.errorbar([p["flops"] for p in q], [p["majority"] for p in q],
                               yerr=[p["majority_se"] for p in q], marker="o", ms=3, capsize=2,
                               label=f"s={s}" + (" (no adaptation)" if s == 0 else ""))
            if s > 0:  # one adaptation shared by the episode's queries
                ax.plot([p["flops_amortized"] for p in q], [p["majority"] for p in q], ls="--", lw=0.8, alpha=0.6,
                        color=line.lines[0].get_color())
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per query: A(s) + N c0 (dashed: A(s) shared)")
        ax.set_ylabel("majority@N accuracy (strict)")
        ax.set_title(level)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for level in levels:
        c = level_runs[level]["curve"]
        ax.errorbar(steps, [c[str(s)]["p"] for s in steps], yerr=[c[str(s)]["p_se"] for s in steps], marker="o",
                    capsize=2, label=f"{level} strict")
        ax.plot(steps, [c[str(s)]["lenient"] for s in steps], ls=":", color=ax.lines[-1].get_color(),
                label=f"{level} lenient")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("adaptation steps s")
    ax.set_ylabel("N = 1 accuracy")
    ax.set_title("per-sample accuracy vs steps")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="arith-policy")
    ap.add_argument("--format", default="marker", choices=sorted(SHIFTED))
    ap.add_argument("--levels", nargs="+", default=list(A.LEVELS), choices=list(A.LEVELS))
    ap.add_argument("--k", type=int, default=16, help="demonstrations per episode (the adaptation prefix)")
    ap.add_argument("--episodes", type=int, default=4, help="demonstration sets per level")
    ap.add_argument("--problems", type=int, default=32, help="test problems per episode")
    ap.add_argument("--samples", type=int, default=16, help="samples per problem and step count")
    ap.add_argument("--samples0", type=int, default=64, help="samples per problem without adaptation (s = 0)")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--scope", default="all")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--dev", action="store_true", help="sweep --dev-configs on the dev split (held-out seed 1)")
    ap.add_argument("--dev-configs", nargs="+", default=["all:adam:1e-4", "all:adam:3e-4", "all:adam:1e-3",
                                                          "lora:adam:3e-3", "norms:adam:1e-2"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-cap-min", type=float, default=30.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/adapt/format"))
    ap.add_argument("--smoke", action="store_true", help="tiny run (1 level, 1 episode, 4 problems)")
    ap.add_argument("--machine", default="")
    ap.add_argument("--refit", default=None, help="a results.json to post-process again instead of running")
    args = ap.parse_args(argv)
    if args.smoke:
        args.levels, args.episodes, args.problems, args.samples, args.samples0, args.k = ["easy"], 1, 4, 2, 4, 4
        args.steps, args.ns = [0, 1, 2], [1, 2, 4]
        args.out = os.path.join(args.out, "smoke")
    if args.refit:  # post-process a finished run again (fit, matched points, plot)
        with open(args.refit) as f:
            old = json.load(f)
        for k, v in old["args"].items():
            if k not in ("refit", "out"):
                setattr(args, k, v)
        results, wall = old["results"], old["wall_s"]
    else:
        if sorted(set(args.steps)) != args.steps or args.steps[0] != 0:
            ap.error("--steps must be increasing and start at 0")
        results, wall = run(args)
    os.makedirs(args.out, exist_ok=True)
    name = "dev.json" if args.dev else "results.json"
    doc = {"format": FORMAT, "args": {k: v for k, v in vars(args).items()}, "wall_s": wall,
           "shifted_format": {"name": args.format, **SHIFTED[args.format].__dict__},
           "example": SHIFTED[args.format].prompt(A.heldout_problems("medium", 1)[0])
           + SHIFTED[args.format].solution(A.heldout_problems("medium", 1)[0]),
           "results": results}
    if not args.dev:
        key = next(iter(results))
        doc["matched"] = {lv: matched(r, args.steps, args.ns, args.problems) for lv, r in results[key].items()}
        gains = fit_gains(results[key], args.steps)
        doc["gain"] = gains
        with open(os.path.join(args.out, "gain.json.tmp"), "w") as f:
            json.dump({"format": "ttc-jax.adaptation-gain/1", "task": "arithmetic", "shift": args.format,
                       "policy": args.policy, "config": key, "k_demonstrations": args.k, "gains": gains}, f,
                      indent=1)
        os.replace(os.path.join(args.out, "gain.json.tmp"), os.path.join(args.out, "gain.json"))
        plot(results[key], args.steps, os.path.join(args.out, "format.png"), args.problems)
        print(tables(results[key], args.steps, args.problems))
    with open(os.path.join(args.out, name + ".tmp"), "w") as f:
        json.dump(doc, f, indent=1, default=float)
    os.replace(os.path.join(args.out, name + ".tmp"), os.path.join(args.out, name))
    print(f"wrote {os.path.join(args.out, name)} in {wall:.0f}s")


if __name__ == "__main__":
    main()
