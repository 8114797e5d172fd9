"""The small real result: train the four tiny presets on the stdlib corpus with the same token budget.

Each preset is trained by `ttc train` in its own process (sequentially), then this script collects
final validation loss/perplexity, loss by token position and training tokens/s into one JSON and
one plot. Usage (one run, in the background, on a shared machine):

    nice -n 10 python benchmarks/train_tiny.py --root /work/runs/train_tiny \
        --out benchmarks/results/train_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

PRESETS = ("tiny-ttt-linear", "tiny-ttt-mlp", "tiny-hybrid", "tiny-transformer")


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="parent of the run workdirs")
    ap.add_argument("--out", required=True, help="results folder (JSON + PNG)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eval-batches", type=int, default=24)
    ap.add_argument("--extra", nargs="*", default=[], help="more --set overrides for every run")
    ap.add_argument("--machine", default="2-core CPU", help="recorded with the results (say if it was shared)")
    ap.add_argument("--ship", default=None, metavar="PRESET=DIR",
                    help="afterwards, write that run's final checkpoint as a shipped model folder with a card")
    ap.add_argument("--ship-only", action="store_true", help="only --ship, from the results.json in --out")
    args = ap.parse_args()
    if args.ship_only:
        with open(os.path.join(args.out, "results.json")) as f:
            results = json.load(f)
        preset, dst = args.ship.split("=", 1)
        ship(results, preset, dst, results["config"].get("command", "python benchmarks/train_tiny.py"))
        return
    os.makedirs(args.out, exist_ok=True)
    common = [f"seq_len={args.seq_len}", f"batch_size={args.batch}", f"eval_every={args.steps // 2}",
              f"eval_batches={args.eval_batches}", f"save_every={args.steps // 2}", "log_every=4",
              f"warmup_steps={max(1, args.steps // 10)}", *args.extra]
    results = {"config": {"steps": args.steps, "seq_len": args.seq_len, "batch_size": args.batch,
                          "tokens": args.steps * args.seq_len * args.batch, "eval_batches": args.eval_batches,
                          "overrides": common, "machine": args.machine,
                          "command": " ".join(["python", "benchmarks/train_tiny.py", *sys.argv[1:]])},
               "runs": {}}
    for preset in args.presets.split(","):
        workdir = os.path.join(args.root, preset)
        cmd = [sys.executable, "-m", "ttc_jax.cli", "train", "--config", preset, "--workdir", workdir,
               "--steps", str(args.steps), "--no-progress", "--set", *common]
        print(" ".join(cmd), flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode:
            results["runs"][preset] = {"error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall}
            print(proc.stderr[-2000:], flush=True)
            continue
        rows = read_metrics(workdir)
        train_rows = [r for r in rows if "loss" in r]
        val_rows = [r for r in rows if "val_loss" in r]
        tps = [r["tokens_per_s"] for r in train_rows if "tokens_per_s" in r]
        with open(os.path.join(workdir, "loss_by_position.json")) as f:
            curve = next(iter(json.load(f).values()))
        results["runs"][preset] = {
            "workdir": workdir, "wall_s": wall,
            "final_val_loss": val_rows[-1]["val_loss"], "final_val_ppl": val_rows[-1]["val_ppl"],
            "val_curve": [[r["step"], r["val_loss"]] for r in val_rows],
            "train_curve": [[r["step"], r["loss"]] for r in train_rows],
            "tokens_per_s_median": float(np.median(tps)) if tps else None,
            "mfu_median": float(np.median([r["mfu"] for r in train_rows if "mfu" in r])) if tps else None,
            "loss_by_position": curve,
        }
        print(preset, results["runs"][preset]["final_val_loss"], flush=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    plot(results, os.path.join(args.out, "train_tiny.png"))
    if args.ship:
        preset, dst = args.ship.split("=", 1)
        ship(results, preset, dst, results["config"]["command"])


def ship(results: dict, preset: str, dst: str, command: str) -> None:
    """The preset's final checkpoint as a `from_pretrained` folder, with a model card from the results."""
    from ttc_jax import save_pretrained
    from ttc_jax.checkpoints.training import load_train_workdir

    r, c = results["runs"][preset], results["config"]
    model, cfg, info = load_train_workdir(r["workdir"])
    n_params = sum(int(x.size) for x in __import__("jax").tree.leaves(__import__("flax").nnx.state(model)))
    val = ", ".join(f"{v:.3f} at step {s}" for s, v in r["val_curve"])
    card = f"""# {os.path.basename(dst.rstrip("/"))}

A {preset} language model over UTF-8 bytes (vocab 256; {cfg.n_layers} layers, d_model {cfg.d_model},
{cfg.n_heads} heads, mini-batch {cfg.mini_batch_size}, backbone {cfg.backbone}; {n_params:,} parameters),
trained by `ttc train` on the Python standard library source corpus (`ttc data prepare`'s default `stdlib`
corpus; train/validation split by file). It is the code model of `ttc demo` and the small real result of
`benchmarks/results/train_tiny/`; a CPU-sized model, so its completions are code-shaped, not correct code.

| | |
|---|---|
| data | Python stdlib sources, byte tokenizer, context {c['seq_len']} |
| steps | {info['step']} x batch {c['batch_size']} x {c['seq_len']} = {c['tokens']:,} training tokens |
| validation loss | {val} (nats/byte; {c['eval_batches']} batches; uniform is ln 256 = 5.545) |
| training tokens/s | {r['tokens_per_s_median']:,.0f} (median; {c['machine']}) |
| wall time | {r['wall_s']:.0f} s (training, evaluation and checkpoints) |

Reproduce: the run, then this folder from its last checkpoint,

```bash
ttc train --config {preset} --workdir runs/{preset} --steps {c['steps']} --no-progress --set {' '.join(c['overrides'])}
python -c "from ttc_jax.checkpoints.training import load_train_workdir; from ttc_jax import save_pretrained; \\
m, c, _ = load_train_workdir('runs/{preset}'); save_pretrained(m, c, '{dst}', tokenizer='byte')"
```

or all four tiny presets on the same budget and this folder with its card in one go:

```bash
{command}
```

```python
import ttc_jax
model, config, tokenizer = ttc_jax.from_pretrained("{os.path.basename(dst.rstrip("/"))}", with_tokenizer=True)
```
"""
    save_pretrained(model, cfg, dst, card=card, tokenizer="byte", overwrite=True,
                    metadata={"trained_by": "ttc train", "step": info["step"], "val_loss": r["final_val_loss"]})
    print(f"shipped {preset} step {info['step']} to {dst}", flush=True)


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ttc_jax.train.metrics import smooth_by_position
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results["runs"].items():
        if "error" in r:
            continue
        s = np.asarray(r["train_curve"])
        a.plot(s[:, 0], s[:, 1], label=f"{name} (val {r['final_val_loss']:.3f})")
        x, y = smooth_by_position(np.asarray([np.nan if v is None else v for v in r["loss_by_position"]], float), 32)
        b.plot(x + 1, y, label=name)
    c = results["config"]
    a.set_xlabel("step")
    a.set_ylabel("training loss (nats/byte)")
    a.set_title(f"{c['tokens'] / 1e6:.2f}M tokens, context {c['seq_len']}")
    b.set_xscale("log")
    b.set_xlabel("token position")
    b.set_ylabel("validation loss (nats/byte)")
    b.set_title("validation loss by position (final)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
