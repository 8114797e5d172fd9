"""`ttc solve`: answer arithmetic queries under a FLOP budget with the composed pipeline.

    ttc solve --policy arith-policy --prm arith-prm --curves benchmarks/results/bon/curves.json \\
              --budget 5e8 --prompt "Q:347+52*3+918"
    ttc solve ... --budget 5e8 --problems 50 --levels easy,hard --out solve.json   # accuracy + mean FLOPs

Difficulty bins are calibrated on --calibrate training-distribution problems (never the held-out ones).
--gains FILE (per-bin AdaptationGain, as benchmarks/adapt_format.py writes) with --adapt-prefix TEXT enables
test-time adaptation on that text. --check-flops recounts each query's ledger with XLA.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ttc_jax.tasks import arithmetic as A


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("solve", help="answer queries under a FLOP budget: adapt, sample, select (a planner "
                                            "chooses per query)")
    p.add_argument("--policy", required=True, help="policy checkpoint (shipped name or path)")
    p.add_argument("--prm", default=None, help="PRM checkpoint (shipped name or path)")
    p.add_argument("--curves", required=True, help="measured accuracy curves (ttc-jax.accuracy-curves/1 JSON)")
    p.add_argument("--budget", type=float, required=True, help="FLOPs per query")
    p.add_argument("--prompt", default=None, help="one query, e.g. 'Q:347+52*3+918'")
    p.add_argument("--problems", type=int, default=0, help="held-out problems per level to evaluate instead")
    p.add_argument("--levels", default=",".join(A.LEVELS))
    p.add_argument("--calibrate", type=int, default=30, help="problems per level to calibrate difficulty bins on")
    p.add_argument("--gains", default=None, help="JSON {bin: {h0, s0, beta}} of fitted adaptation gains")
    p.add_argument("--adapt-prefix", default=None, help="text to adapt the policy on (with --gains)")
    p.add_argument("--adapt-mode", default="shared", choices=["shared", "per_sample"],
                   help="one adapted copy for all samples, or a copy per sample")
    p.add_argument("--adapt-lr", type=float, default=1e-4)
    p.add_argument("--adapt-optimizer", default="adam", choices=["sgd", "adam"])
    p.add_argument("--probe-n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-flops", action="store_true", help="recount every ledger with XLA's cost analysis")
    p.add_argument("--out", default=None, help="write the solutions and the summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def _gains(path):
    from ttc_jax.scaling.allocate import AdaptationGain
    with open(path) as f:
        d = json.load(f)
    d = d.get("gains", d)
    if not isinstance(d, dict):
        raise ValueError(f"--gains {path!r}: expected a JSON object {{bin: {{h0, s0, beta}}}}")
    out, max_steps = {}, {}
    for b, g in d.items():
        try:
            out[b] = AdaptationGain(float(g["h0"]), float(g["s0"]), float(g["beta"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"--gains {path!r}: bin {b!r} has {g!r}; expected {{h0, s0, beta}}") from e
        if "max_steps" in g:  # the most steps the gain was fitted on
            max_steps[b] = int(g["max_steps"])
    return out, max_steps


def build(args):
    """(pipeline, prm config or None) from the arguments; calibrates the bins."""
    import jax

    from ttc_jax.pipeline.core import Pipeline, PipelineConfig
    from ttc_jax.scaling.curves import curves_from_dict
    from ttc_jax.search.lm import TextCodec
    from ttc_jax.search.loading import load_policy_and_rewards

    with open(args.curves) as f:
        curves = curves_from_dict(json.load(f))
    policy, prm, _ = load_policy_and_rewards(args.policy, args.prm, vocab_size=A.VOCAB_SIZE, separator=A.SEP)
    gains, max_steps = _gains(args.gains) if args.gains else (None, None)
    cfg = PipelineConfig(probe_n=args.probe_n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         adapt_mode=args.adapt_mode, adapt_lr=args.adapt_lr, adapt_optimizer=args.adapt_optimizer)
    pipe = Pipeline(policy, TextCodec(A.SEP, A.EOS, A.PAD), lambda t: A.normalise_answer(A.final_answer(t)), curves,
                    prm=prm, gains=gains, config=cfg, adapt_max_steps=max_steps)
    calib = [q.prompt for lv in A.LEVELS for q in A.sample_problems(10_000 + args.seed, lv, args.calibrate)]
    pipe.calibrate(calib, key=jax.random.key(args.seed + 1))
    return pipe


def run(args) -> int:
    import jax
    from tqdm import tqdm

    if args.budget <= 0:
        raise ValueError(f"--budget={args.budget}; expected FLOPs > 0")
    if (args.prompt is None) == (args.problems <= 0):
        raise ValueError("pass one of --prompt TEXT or --problems N (> 0)")
    if args.adapt_prefix is not None and args.gains is None:
        raise ValueError("--adapt-prefix needs --gains (the fitted adaptation gain per bin)")
    levels = [s for s in args.levels.split(",") if s]
    for lv in levels:
        if lv not in A.LEVELS:
            raise ValueError(f"--levels has {lv!r}; expected some of {list(A.LEVELS)}")
    if args.prompt is not None:
        prompt = args.prompt if args.prompt.endswith("\n") else args.prompt + "\n"
        A.parse_prompt(prompt)  # a clear error for a malformed query
        queries = [("", prompt, None)]
    else:
        queries = [(lv, q.prompt, str(q.answer)) for lv in levels for q in A.heldout_problems(lv, args.problems,
                                                                                              args.seed)]
    pipe = build(args)
    prefix = np.asarray(A.encode(args.adapt_prefix), np.int32) if args.adapt_prefix else None
    keys = jax.random.split(jax.random.key(args.seed), len(queries))
    rows = []
    for (lv, prompt, truth), key in tqdm(list(zip(queries, keys)), desc="solve", disable=args.no_progress,
                                         file=sys.stderr):
        sol = pipe.solve(prompt, args.budget, key=key, adapt_prefix=prefix)
        row = {"level": lv, "prompt": prompt, **sol.to_dict()}
        if truth is not None:
            row["correct"] = sol.answer == truth
        if args.check_flops:
            from ttc_jax.pipeline.xla import ledger_xla
            x = ledger_xla(sol.ledger, pipe.policy.cfg, pipe.prm.cfg if pipe.prm is not None else None)
            row["flops_xla"] = x
            row["flops_ratio_xla"] = sum(x.values()) / sol.ledger.total
        rows.append(row)
    summary = {"budget": args.budget, "bins": pipe.bins.to_dict(), "levels": {}}
    if args.prompt is not None:
        r = rows[0]
        print(f"answer: {r['answer']}   (bin {r['bin']}, difficulty {r['difficulty']:.3f}, strategy "
              f"{r['choice']['strategy']}, N={r['choice']['n']}, adaptation steps {r['choice']['steps']})")
        print(r["completion"].rstrip())
        _print_ledger(r)
    else:
        for lv in levels:
            rs = [r for r in rows if r["level"] == lv]
            summary["levels"][lv] = {"accuracy": float(np.mean([r["correct"] for r in rs])),
                                     "mean_flops": float(np.mean([r["flops"]["total"] for r in rs])),
                                     "problems": len(rs)}
            s = summary["levels"][lv]
            print(f"{lv}: accuracy {s['accuracy']:.3f} over {s['problems']} problems, mean {s['mean_flops']:.3g} FLOPs "
                  f"per query (budget {args.budget:.3g})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "solutions": rows}, f, indent=1)
        print(f"wrote {args.out}")
    return 0


def _print_ledger(row) -> None:
    led = row["flops"]
    print(f"FLOPs: {led['total']:.4g} total")
    for c, v in led["by_component"].items():
        line = f"  {c:<11}{v:12.4g}"
        if "flops_xla" in row:
            line += f"   XLA {row['flops_xla'][c]:12.4g}"
        print(line)
    if "flops_ratio_xla" in row:
        print(f"  XLA / ledger = {row['flops_ratio_xla']:.3f}")
