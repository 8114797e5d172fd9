"""The main demo (`ttc demo`, `make run`): the shipped models at work.

1. Best-of-N on held-out arithmetic problems with the shipped policy and PRM: accuracy by strategy at
   N = 1, 4, 16 (one pool of samples per problem; smaller N are averaged over disjoint subsets), a table
   and a plot.
2. A code completion by the shipped stdlib TTT-Linear model on a file it did not train on, next to the
   TTT layers' inner (self-supervised) loss per mini-batch falling as the fast weights learn the prompt.

`ttc demo --random` runs the older random-weight demo (forward, generation, decode == full pass).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

DEFAULT_POLICY, DEFAULT_PRM, DEFAULT_LM = "arith-policy", "arith-prm", "tiny-ttt-linear-stdlib"
STRATEGIES = ("majority", "best_of_n_prm_last", "weighted_best_of_n_prm", "oracle")


def _ints(name: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}={text!r}; expected a comma list of ints") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name}={text!r}; expected a comma list of ints >= 1")
    return sorted(set(values))


def best_of_n(policy_name: str, prm_name: str, *, levels: list[str], problems: int, ns: list[int], seed: int,
              progress=lambda s: None) -> dict:
    """Accuracy by strategy and N on held-out problems of each level (the `ttc best-of-n` results layout)."""
    from ttc_jax.search.evaluate import FORMAT, evaluate_level
    from ttc_jax.search.lm import Policy, RewardScorer, TextCodec
    from ttc_jax.search.loading import load_policy_and_rewards
    from ttc_jax.tasks import arithmetic as A

    for lv in levels:
        if lv not in A.LEVELS:
            raise ValueError(f"--levels has {lv!r}; expected some of {list(A.LEVELS)}")
    codec = TextCodec(A.SEP, A.EOS, A.PAD)
    policy_model, rm, _ = load_policy_and_rewards(policy_name, prm_name, vocab_size=A.VOCAB_SIZE, separator=A.SEP)
    policy, prm = Policy(policy_model, codec), RewardScorer(rm, codec)
    rng = np.random.default_rng(seed)
    results = {"format": FORMAT, "task": "arithmetic", "ns": ns, "strategies": list(STRATEGIES),
               "policy": policy_name, "prm": prm_name, "seed": seed, "levels": {}}
    for lv in levels:
        qs = A.heldout_problems(lv, problems, seed)
        results["levels"][lv] = evaluate_level(policy, prm, None, qs, ns=ns, strategies=STRATEGIES, rng=rng,
                                               progress=lambda s, lv=lv: progress(f"{lv}: {s}"))
    return results


def accuracy_table(results: dict) -> str:
    """A Markdown table: one row per level and strategy, one column per N."""
    ns = results["ns"]
    lines = ["| level | strategy | " + " | ".join(f"N={n}" for n in ns) + " |",
             "|---|---|" + "---|" * len(ns)]
    for lv, r in results["levels"].items():
        for name, acc in r["accuracy"].items():
            lines.append(f"| {lv} | {name} | " + " | ".join(f"{acc[str(n)]:.3f}" for n in ns) + " |")
    return "\n".join(lines)


def heldout_code(prompt_bytes: int, seed: int = 0) -> tuple[str, str]:
    """(name, prompt) from a validation-split stdlib file (the split `ttc data prepare` makes by default): the
    `prompt_bytes` that end with the file's first `def` line past that many bytes, so a function body follows."""
    from ttc_jax.data.corpus import documents, read_text_file, resolve_source, split_documents
    from ttc_jax.data.prepare import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION

    docs = split_documents(documents(resolve_source(None)), val_fraction=DEFAULT_VAL_FRACTION, seed=DEFAULT_SPLIT_SEED,
                           heldout_tests=True)
    val = sorted(docs["validation"], key=lambda d: d.id)
    for i in np.random.default_rng(seed).permutation(len(val)):
        text, bad = read_text_file(val[i].path)
        if bad or not text.isascii():
            continue
        for m in re.finditer(r"\n *def [^\n]*:\n", text):
            if m.start() >= prompt_bytes and len(text) >= m.end() + 64:
                return val[i].id, text[m.end() - prompt_bytes:m.end()]
    raise ValueError(f"no validation file of the stdlib corpus has a def line after {prompt_bytes} bytes")


def code_completion(lm_name: str, *, prompt_bytes: int, new_tokens: int, seed: int) -> dict:
    """A sampled completion of a held-out stdlib file's opening, and the inner loss per mini-batch."""
    import jax
    import jax.numpy as jnp

    from ttc_jax import from_pretrained
    from ttc_jax.generate import generate

    model, cfg, tok = from_pretrained(lm_name, with_tokenizer=True)
    name, text = heldout_code(prompt_bytes, seed)
    ids = tok.encode(text)
    prompt = jnp.asarray([ids], jnp.int32)
    _, stats = model(prompt, return_ttt_stats=True)
    # [layers, mini-batches]: the loss of each mini-batch's tokens at the fast weights before its update
    inner = np.stack([np.asarray(st["loss_before"][0]).mean(0) for st in stats.values()])
    out = generate(model, prompt, new_tokens, rng=jax.random.key(seed), temperature=0.8, top_p=0.95)
    completion = tok.decode([int(t) for t in np.asarray(out[0])])
    return {"model": lm_name, "file": name, "prompt": tok.decode(ids), "completion": completion,
            "mini_batch_size": cfg.mini_batch_size, "ttt_layers": [int(i) for i in stats],
            "inner_loss_before": inner.tolist()}


def inner_loss_summary(inner: np.ndarray, buckets: int = 8) -> str:
    """The mean inner loss over the TTT layers in `buckets` equal spans of the prompt."""
    mean = inner.mean(0)
    spans = np.array_split(mean, min(buckets, len(mean)))
    return " -> ".join(f"{s.mean():.2f}" for s in spans)


def plot(results: dict, code: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ttc_jax.search.plots import draw_accuracy

    levels = list(results["levels"])
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(4.5 * (len(levels) + 1), 3.8), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        draw_accuracy(ax, results["levels"][lv], f"arithmetic {lv}")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    inner = np.asarray(code["inner_loss_before"])
    K = code["mini_batch_size"]
    x = (np.arange(inner.shape[1]) + 1) * K
    for layer, row in zip(code["ttt_layers"], inner):
        ax.plot(x, row, lw=1, label=f"layer {layer}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prompt position (end of mini-batch)")
    ax.set_ylabel("inner loss before the update")
    ax.set_title(f"TTT inner loss on {code['file']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_pretrained_demo(*, policy: str = DEFAULT_POLICY, prm: str = DEFAULT_PRM, lm: str = DEFAULT_LM,
                        levels: list[str] = ("easy", "medium"), problems: int = 32, ns: list[int] = (1, 4, 16),
                        prompt_bytes: int = 512, new_tokens: int = 160, seed: int = 0, out: str = "demo_out",
                        progress: bool = True) -> dict:
    """Run both parts, print the results, write `out`/demo.png and `out`/demo.json; return the results."""
    import jax
    from tqdm import tqdm

    if isinstance(problems, bool) or not isinstance(problems, int) or problems < 1:
        raise ValueError(f"problems={problems!r}; expected an int >= 1")
    for name, value, lowest in (("prompt_bytes", prompt_bytes, 16), ("new_tokens", new_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ValueError(f"{name}={value!r}; expected an int >= {lowest}")
    t0 = time.time()
    print(f"ttc-jax demo on {jax.default_backend()} ({jax.device_count()} device(s)): shipped models "
          f"{policy!r} + {prm!r} (best-of-N), {lm!r} (code)")
    bar = tqdm(total=2 * len(levels) + 2, desc="demo", disable=not progress, file=sys.stderr, leave=False)

    def step(msg: str):
        bar.set_postfix_str(msg)
        if any(k in msg for k in ("sampled", "PRM scored", "code completed")):
            bar.update(1)

    res = best_of_n(policy, prm, levels=list(levels), problems=problems, ns=list(ns), seed=seed, progress=step)
    code = code_completion(lm, prompt_bytes=prompt_bytes, new_tokens=new_tokens, seed=seed)
    step("code completed")
    os.makedirs(out, exist_ok=True)
    png = os.path.join(out, "demo.png")
    plot(res, code, png)
    bar.update(1)
    bar.close()

    print(f"\nBest-of-N on held-out arithmetic ({problems} problems per level; one pool of {max(ns)} samples "
          "per problem, smaller N averaged over disjoint subsets; PRM = the shipped step-level reward model):\n")
    print(accuracy_table(res))
    print(f"\nCode completion by {lm} on {code['file']} (held out of its training split):")
    print("--- prompt (last 240 bytes) ---")
    print(code["prompt"][-240:])
    print("--- completion (sampled: temperature 0.8, top-p 0.95) ---")
    print(code["completion"])
    print("---")
    inner = np.asarray(code["inner_loss_before"])
    print(f"TTT inner loss over the prompt (mean of {inner.shape[0]} layers, {inner.shape[1]} mini-batches of "
          f"{code['mini_batch_size']} tokens, in 8 spans): {inner_loss_summary(inner)}")
    result = {"best_of_n": res, "code": code, "wall_seconds": time.time() - t0, "plot": png}
    with open(os.path.join(out, "demo.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {png} and {os.path.join(out, 'demo.json')} in {result['wall_seconds']:.0f} s")
    return result


def main(args) -> int:
    if args.random:
        from ttc_jax.demo_random import run_demo

        result = run_demo(args.preset, batch=args.batch, seq_len=args.seq_len,
                          new_tokens=32 if args.new_tokens is None else args.new_tokens, seed=args.seed)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
            print(f"wrote {args.json}")
        return 0
    run_pretrained_demo(policy=args.policy, prm=args.prm, lm=args.lm,
                        levels=[s for s in args.levels.split(",") if s], problems=args.problems,
                        ns=_ints("--n", args.n), prompt_bytes=args.prompt_bytes,
                        new_tokens=160 if args.new_tokens is None else args.new_tokens, seed=args.seed, out=args.out,
                        progress=not args.no_progress)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="best-of-N with the shipped policy + PRM and a code completion "
                                           "(--random: the random-weight model demo)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--random", action="store_true", help="the random-weight demo (forward, generation, exactness)")
    p.add_argument("--policy", default=DEFAULT_POLICY, help="shipped name or checkpoint folder")
    p.add_argument("--prm", default=DEFAULT_PRM, help="shipped name or reward-model folder")
    p.add_argument("--lm", default=DEFAULT_LM, help="shipped name or checkpoint folder of a byte-level code LM")
    p.add_argument("--levels", default="easy,medium")
    p.add_argument("--problems", type=int, default=32, help="held-out problems per level")
    p.add_argument("--n", default="1,4,16", help="comma list of N")
    p.add_argument("--prompt-bytes", type=int, default=512)
    p.add_argument("--out", default="demo_out", help="folder for demo.png and demo.json")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    random = p.add_argument_group("--random")
    random.add_argument("--preset", default="tiny-hybrid")
    random.add_argument("--batch", type=int, default=4)
    random.add_argument("--seq-len", type=int, default=128)
    random.add_argument("--new-tokens", type=int, default=None, help="tokens to generate (default 32 / 160)")
    random.add_argument("--json", help="write the measurements to this JSON file")
    p.set_defaults(func=main)
