"""Throughput of the TTT inner loop: dual form (impl="xla") vs primal reference.

Forward and forward+backward tokens/s of `ttc_jax.ttt.ttt_linear` / `ttt_mlp`
at the 125m head shape (H=12, F=64, K=16) for several sequence lengths, both
implementations measured in the same run. Writes JSON and a plot to
benchmarks/results/.

    python benchmarks/ttt_layer.py                 # T in 512, 2048, 8192
    python benchmarks/ttt_layer.py --quick         # tiny shapes, for CI
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax

from ttc_jax.kernels.bench import build  # the same jitted forward / forward+backward as the kernel benchmark
from ttc_jax.ttt.testing import random_inputs

RESULTS = Path(__file__).parent / "results"


def make_inputs(kind, B, H, T, F, K, seed=0):
    """Published-like scales: W0 ~ N(0, 0.02), rates base_lr * sigmoid(.) / F <= 1/F."""
    return random_inputs(kind, B=B, H=H, T=T, F=F, K=K, seed=seed, weight_scale=0.02, lr_range=(0.0, 1.0 / F))


def time_fn(fn, args, min_repeats=3, budget_s=10.0):
    """(compile+first call seconds, median steady-state seconds)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    while len(times) < min_repeats or (sum(times) < budget_s / 4 and len(times) < 20):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return first, statistics.median(times)


def run(lengths, B, H, F, K, kinds, impls, modes, min_repeats):
    rows = []
    for kind in kinds:
        for T in lengths:
            args = make_inputs(kind, B, H, T, F, K)
            for mode in modes:
                for impl in impls:
                    row = {"learner": kind, "impl": impl, "mode": mode, "T": T}
                    try:
                        first, sec = time_fn(build(kind, impl, mode, K), args, min_repeats)
                    except jax.errors.JaxRuntimeError as e:  # e.g. the primal form's per-token residuals
                        if "RESOURCE_EXHAUSTED" not in str(e):
                            raise
                        row["error"] = str(e).splitlines()[0][:200]
                        rows.append(row)
                        print(f"{kind:10s} {mode:16s} T={T:5d} {impl:9s} {row['error']}")
                        continue
                    rows.append({**row, "seconds": sec, "first_call_seconds": first, "tokens_per_s": B * T / sec})
                    print(f"{kind:10s} {mode:16s} T={T:5d} {impl:9s} {sec * 1e3:10.2f} ms "
                          f"{B * T / sec:12,.0f} tok/s")
    return rows


def speedups(rows, baseline="reference", impl="xla"):
    key = lambda r: (r["learner"], r["mode"], r["T"])
    base = {key(r): r["seconds"] for r in rows if r["impl"] == baseline and "seconds" in r}
    return [{"learner": r["learner"], "mode": r["mode"], "T": r["T"],
             f"{impl}_over_{baseline}": base[key(r)] / r["seconds"]}
            for r in rows if r["impl"] == impl and key(r) in base and "seconds" in r]


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = sorted({r["learner"] for r in rows})
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for mode in modes:
            for impl, style in (("xla", "-o"), ("reference", "--s")):
                pts = sorted((r["T"], r["tokens_per_s"]) for r in rows if "tokens_per_s" in r
                             and r["learner"] == kind and r["mode"] == mode and r["impl"] == impl)
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{impl} {mode}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="tokens/s", title=kind)
        lengths = sorted({r["T"] for r in rows})
        ax.set_xticks(lengths, [str(t) for t in lengths], minor=False)
        ax.set_xticks([], minor=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--mini-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny shapes (CI smoke run)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="ttt_layer")
    a = p.parse_args(argv)
    if a.quick:
        a.lengths, a.heads, a.head_dim, a.mini_batch, a.repeats = [20], 2, 8, 8, 1
    rows = run(a.lengths, a.batch, a.heads, a.head_dim, a.mini_batch, ["ttt_linear", "ttt_mlp"],
               ["xla", "reference"], ["forward", "forward_backward"], a.repeats)
    result = {
        "benchmark": "ttt_layer",
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__, "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
        "shape": {"B": a.batch, "H": a.heads, "F": a.head_dim, "K": a.mini_batch},
        "results": rows, "speedup": speedups(rows),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    json_path = a.out / f"{a.name}_{jax.default_backend()}.json"
    json_path.write_text(json.dumps(result, indent=2))
    plot(rows, a.out / f"{a.name}_{jax.default_backend()}.png")
    for s in result["speedup"]:
        print(f"{s['learner']:10s} {s['mode']:16s} T={s['T']:5d} xla/reference = {s['xla_over_reference']:.1f}x")
    print(f"wrote {json_path}")
    return result


if __name__ == "__main__":
    main()
