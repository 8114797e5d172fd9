"""Best-of-N sampler: N candidates in one compiled call vs N sequential single-sample calls; decode tokens/s
of the sampler (vmap and batch modes) vs the model's own batched decode at the same total batch.

Same model (tiny-hybrid preset, random weights), same prompt, same lengths (no stop tokens, so every call
decodes exactly --new tokens). Times are the best of --repeats warm calls (compile excluded), the compared
functions timed in turn; ratios are between numbers measured in this run. The single-sample calls and the
one-call sampler both go through `sample` (prefill included); the decode comparison starts both from a
prefilled prompt. The machine may be shared: the load average is recorded.

Run:  .venv/bin/python benchmarks/bon_sampler.py [--preset tiny-hybrid] [--prompt-len 32] [--new 32]
Writes benchmarks/results/bon/sampler.json and sampler.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.generate import decode, prefill, prefill_prompts, sample
from ttc_jax.nn import HybridLM, get_config
from ttc_jax.scaling.io import write_json

OUT = Path(__file__).resolve().parent / "results" / "bon"


def best_times(fns: dict, repeats: int) -> dict:
    """Best warm wall time of each function, the functions timed in turn (interleaved) so that load spikes
    on the shared machine hit all of them alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-hybrid")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-repeats", type=int, default=7)
    args = ap.parse_args()

    cfg = get_config(args.preset)
    model = HybridLM(cfg, rngs=nnx.Rngs(0))
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, args.prompt_len)).astype(np.int32)
    L, size = args.new, args.prompt_len + args.new
    key = jax.random.key(0)
    result = {"preset": args.preset, "prompt_len": args.prompt_len, "new_tokens": L, "repeats": args.repeats,
              "backend": jax.default_backend(), "devices": jax.device_count(), "cpu_count": os.cpu_count(),
              "load_average_start": os.getloadavg(), "python": platform.python_version(), "jax": jax.__version__,
              "note": "shared machine (other jobs running): ratios are within-run, absolute times are noisy"}

    # 1. N candidates in one compiled call vs N sequential single-sample calls (prefill included in both)
    rows = []
    for n in args.ns:
        keys = jax.random.split(key, n)
        t = best_times({
            "sequential": lambda: [sample(model, prompt, n=1, max_new_tokens=L, rng=k) for k in keys],
            "vmap": lambda: sample(model, prompt, n=n, max_new_tokens=L, rng=key, mode="vmap"),
            "batch": lambda: sample(model, prompt, n=n, max_new_tokens=L, rng=key, mode="batch")}, args.repeats)
        row = {"n": n, "sequential_single_calls_s": t["sequential"]}
        for mode in ("vmap", "batch"):
            row[f"{mode}_s"] = t[mode]
            row[f"{mode}_speedup_vs_sequential"] = t["sequential"] / t[mode]
        rows.append(row)
        t_seq = t["sequential"]
        print(f"N={n:3d}: {n} sequential calls {t_seq * 1e3:8.1f} ms | one call vmap {row['vmap_s'] * 1e3:7.1f} ms "
              f"({row['vmap_speedup_vs_sequential']:.1f}x), batch {row['batch_s'] * 1e3:7.1f} ms "
              f"({row['batch_speedup_vs_sequential']:.1f}x)", flush=True)
    result["one_call_vs_sequential"] = rows

    # 2. decode only: the sampler's loop from a prefilled prompt state vs the model's own batched decode
    decode_rows = []
    for total in args.decode_batches:
        state = prefill_prompts(model, prompt, cache_size=size)
        last, cache = prefill(model, jnp.asarray(np.repeat(prompt, total, axis=0)), size)
        t = best_times({
            "model": lambda: decode(model, last, cache, key, steps=L, temperature=1.0, top_k=None),
            "vmap": lambda: sample(model, n=total, max_new_tokens=L, rng=key, mode="vmap", cache=state),
            "batch": lambda: sample(model, n=total, max_new_tokens=L, rng=key, mode="batch", cache=state)},
            args.decode_repeats)
        row = {"total_batch": total, "prompts": 1, "samples": total,
               "model_batched_decode_tokens_per_s": total * L / t["model"]}
        for mode in ("vmap", "batch"):
            row[f"sampler_{mode}_tokens_per_s"] = total * L / t[mode]
        for mode in ("vmap", "batch"):
            row[f"sampler_{mode}_vs_model_decode"] = (row[f"sampler_{mode}_tokens_per_s"]
                                                      / row["model_batched_decode_tokens_per_s"])
        decode_rows.append(row)
        print(f"decode batch {total}: model {row['model_batched_decode_tokens_per_s']:,.0f} tok/s | sampler vmap "
              f"{row['sampler_vmap_tokens_per_s']:,.0f} ({row['sampler_vmap_vs_model_decode']:.2f}x), batch "
              f"{row['sampler_batch_tokens_per_s']:,.0f} ({row['sampler_batch_vs_model_decode']:.2f}x)", flush=True)
    result["decode_vs_model"] = decode_rows
    result["faster_mode"] = {str(r["n"]): ("vmap" if r["vmap_s"] < r["batch_s"] else "batch") for r in rows}
    result["load_average_end"] = os.getloadavg()
    path = write_json(OUT / "sampler.json", result)
    print(f"wrote {path}")
    plot(result, OUT / "sampler.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    rows = result["one_call_vs_sequential"]
    x = np.arange(len(rows))
    for i, mode in enumerate(("vmap", "batch")):
        a.bar(x + (i - 0.5) * 0.38, [r[f"{mode}_speedup_vs_sequential"] for r in rows], 0.38, label=f"one call ({mode})")
    a.axhline(5, color="k", ls="--", lw=1, label="target 5x")
    a.set_xticks(x, [f"N={r['n']}" for r in rows])
    a.set_ylabel("speedup over N sequential single-sample calls")
    a.legend()
    drows = result["decode_vs_model"]
    x = np.arange(len(drows))
    for i, (k, lab) in enumerate((("model_batched_decode_tokens_per_s", "model's batched decode"),
                                  ("sampler_vmap_tokens_per_s", "sampler (vmap)"),
                                  ("sampler_batch_tokens_per_s", "sampler (batch)"))):
        b.bar(x + (i - 1) * 0.27, [r[k] for r in drows], 0.27, label=lab)
    b.set_xticks(x, [f"batch {r['total_batch']}" for r in drows])
    b.set_ylabel("decode tokens / s")
    b.legend()
    fig.suptitle(f"{result['preset']}, prompt {result['prompt_len']}, {result['new_tokens']} new tokens, "
                 f"{result['backend']} (shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
