"""Benchmark of the fused TTT kernels against the XLA scan and the primal reference.

For each learner, head width F, sequence length T and B*H sequences: median milliseconds,
tokens/s, achieved FLOP/s and bytes/s against the device's peaks (roofline fraction), forward and
forward + backward, for impl in (pallas, xla, reference), all measured in the same run. Writes
JSON and a plot. Cases run in priority order (the issue's target shape first) until a time budget
is spent; the rest are recorded as not run. Used by benchmarks/kernels.py and `ttc bench kernels`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from ttc_jax.kernels.common.minibatch import flops_per_token
from ttc_jax.ttt import LEARNERS, ttt
from ttc_jax.ttt.testing import random_inputs

# Device peaks: (dense bf16 matmul FLOP/s, plain float32 FLOP/s, memory bytes/s); datasheet leads.
PEAKS = {
    "H200": (990e12, 67e12, 4.8e12),
    "H100": (990e12, 67e12, 3.35e12),
    "TPU v4": (275e12, None, 1.2e12),
    "TPU v5 lite": (197e12, None, 0.82e12),
    "TPU v5e": (197e12, None, 0.82e12),
    "TPU v5p": (459e12, None, 2.76e12),
    "TPU v6": (918e12, None, 1.64e12),
}


def device_peaks(kind: str):
    for name, peaks in PEAKS.items():
        if name.lower() in kind.lower():
            return peaks
    return (None, None, None)


def model_flops_per_token(kind: str, F: int, K: int) -> float:
    """Forward FLOPs per token and head of the dual form (matmuls only): per dense layer a -> b,
    6ab (k-path, q-path, update) + 2K(a + b) (the causal K x K products), + 2ab per backpropagated layer."""
    learner = LEARNERS[kind]
    shapes = learner.weight_shapes(1, F)
    return flops_per_token([shapes[f"w{i + 1}"][1:] for i in range(learner.n_layers)], K)


def model_flops(kind, mode, N, T, F, K):
    """Forward, or forward + backward counted as 3x forward (the usual model-FLOP convention)."""
    return model_flops_per_token(kind, F, K) * N * T * (1 if mode == "forward" else 3)


def min_bytes(mode, N, T, F, itemsize):
    """Fewest bytes through memory: read q, k, v, lr, write z; backward also reads those and dz, writes dq..dlr."""
    fwd = N * T * (4 * F + 1) * itemsize
    return fwd if mode == "forward" else fwd + N * T * (8 * F + 2) * itemsize


def reference_bytes_estimate(kind, N, T, F):
    """The primal form's backward keeps per-token weights: N * T * |W| float32."""
    return N * T * sum(int(jnp.prod(jnp.array(s[1:]))) for s in LEARNERS[kind].weight_shapes(1, F).values()) * 4


def build(kind, impl, mode, K):
    def forward(*args):
        return ttt(kind, *args, mini_batch_size=K, impl=impl)[0]

    if mode == "forward":
        return jax.jit(forward)

    def loss(*args):
        return forward(*args).astype(jnp.float32).mean()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 5)))


def time_fn(fn, args, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def cases(kinds, lengths, dims, bhs, impls, modes, target):
    """(kind, F, T, BH, impl, mode) in priority order: the target shape first, then small to large."""
    all_cases = [(kind, F, T, bh, impl, mode) for kind in kinds for F in dims for T in lengths for bh in bhs
                 for mode in modes for impl in impls]
    return sorted(all_cases, key=lambda c: (c[:4] != target, c[2] * c[3] * c[1], c[0], c[5], c[4]))


def run(a, save=lambda rows: None):
    """Run the cases; `save(rows)` after each, so a run killed by a time limit keeps what it measured."""
    dtype = jnp.dtype(a.dtype)
    peak_mm, peak_f32, peak_bw = device_peaks(jax.devices()[0].device_kind)
    rows, t_start = [], time.perf_counter()
    target = ("ttt_linear", 64, 8192, 512)
    inputs = {}
    for kind, F, T, BH, impl, mode in cases(a.kinds, a.lengths, a.dims, a.bh, a.impls, a.modes, target):
        row = {"learner": kind, "F": F, "T": T, "BH": BH, "impl": impl, "mode": mode, "dtype": dtype.name, "K": a.K}
        if time.perf_counter() - t_start > a.budget_s:
            rows.append({**row, "skipped": "time budget spent"})
            continue
        if impl == "reference" and mode == "forward_backward" and reference_bytes_estimate(kind, BH, T, F) > a.max_ref_bytes:
            rows.append({**row, "skipped": f"reference backward needs ~{reference_bytes_estimate(kind, BH, T, F) / 1e9:.0f} GB"})
            continue
        key = (kind, F, T, BH)
        if key not in inputs:
            inputs.clear()
            H = min(BH, a.heads)
            q, k, v, lr, ts, w, lns, lnb = random_inputs(kind, B=BH // H, H=H, T=T, F=F, K=a.K, seed=0,
                                                         weight_scale=0.02, lr_range=(0.0, 1.0 / F))
            inputs[key] = (q.astype(dtype), k.astype(dtype), v.astype(dtype), lr, ts, w, lns, lnb)
        try:
            first, sec = time_fn(build(kind, impl, mode, a.K), inputs[key], a.repeats)
        except Exception as e:  # noqa: BLE001 - recorded per case (OOM, a kernel that cannot take the shape)
            rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            print(f"{kind:10s} F={F:3d} T={T:6d} BH={BH:4d} {mode:16s} {impl:9s} {rows[-1]['error'][:90]}")
            continue
        fl, by = model_flops(kind, mode, BH, T, F, a.K), min_bytes(mode, BH, T, F, 4)
        r = {**row, "ms": sec * 1e3, "first_call_s": first, "tokens_per_s": BH * T / sec,
             "flops": fl, "flop_per_s": fl / sec, "min_bytes": by, "bytes_per_s": by / sec}
        if peak_mm and peak_bw:
            floor = max(fl / peak_mm, by / peak_bw)
            r.update(flop_fraction=fl / sec / peak_mm, bandwidth_fraction=by / sec / peak_bw,
                     roofline_fraction=floor / sec, binding="compute" if fl / peak_mm > by / peak_bw else "memory")
        if peak_f32:
            r["fp32_flop_fraction"] = fl / sec / peak_f32
        rows.append(r)
        save(rows)
        print(f"{kind:10s} F={F:3d} T={T:6d} BH={BH:4d} {mode:16s} {impl:9s} {sec * 1e3:10.2f} ms "
              f"{BH * T / sec:14,.0f} tok/s {fl / sec / 1e12:8.3f} TFLOP/s {by / sec / 1e9:8.1f} GB/s", flush=True)
    return rows


def speedups(rows):
    key = lambda r: (r["learner"], r["F"], r["T"], r["BH"], r["mode"])
    xla = {key(r): r["ms"] for r in rows if r["impl"] == "xla" and "ms" in r}
    out = []
    for r in rows:
        if r["impl"] == "pallas" and "ms" in r and key(r) in xla:
            out.append({**dict(zip(("learner", "F", "T", "BH", "mode"), key(r))), "pallas_over_xla": xla[key(r)] / r["ms"]})
    return out


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds, modes = sorted({r["learner"] for r in rows}), ["forward", "forward_backward"]
    fig, axes = plt.subplots(len(modes), len(kinds), figsize=(5.5 * len(kinds), 4 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            series = sorted({(r["impl"], r["F"], r["BH"]) for r in rows if "ms" in r and r["learner"] == kind
                             and r["mode"] == mode})
            for impl, F, BH in series:
                pts = sorted((r["T"], r["tokens_per_s"]) for r in rows if "ms" in r and r["learner"] == kind
                             and r["mode"] == mode and (r["impl"], r["F"], r["BH"]) == (impl, F, BH))
                ax.plot(*zip(*pts), {"pallas": "-o", "xla": "--s", "reference": ":^"}[impl], label=f"{impl} F={F} BH={BH}")
            ax.set(xscale="log", yscale="log", xlabel="T", ylabel="tokens/s", title=f"{kind} {mode}")
            ax.grid(alpha=0.3)
            if series:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["ttt_linear", "ttt_mlp"], choices=sorted(LEARNERS))
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128], help="head widths F")
    p.add_argument("--bh", type=int, nargs="+", default=[64, 512], help="B * H sequences")
    p.add_argument("--heads", type=int, default=8, help="H (B = BH / H)")
    p.add_argument("--K", type=int, default=16, help="mini-batch size")
    p.add_argument("--impls", nargs="+", default=["pallas", "xla", "reference"])
    p.add_argument("--modes", nargs="+", default=["forward", "forward_backward"])
    p.add_argument("--dtype", default=None, help="input dtype (default bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting new cases after this many seconds")
    p.add_argument("--max-ref-gb", type=float, default=20.0, help="skip reference backward needing more")
    p.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (interpret mode), for CI")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    p.add_argument("--name", default="kernels")
    return p


def main(argv=None, args=None):
    a = args or parser().parse_args(argv)
    if a.quick:
        a.lengths, a.dims, a.bh, a.heads, a.K, a.repeats = [32], [8], [4], 2, 8, 1
    a.dtype = a.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    a.max_ref_bytes = a.max_ref_gb * 1e9
    for name, values in (("--lengths", a.lengths), ("--dims", a.dims), ("--bh", a.bh)):
        if any(x < 1 for x in values):
            raise ValueError(f"{name}={values}; expected positive ints")
    if any(bh % min(bh, a.heads) for bh in a.bh):
        raise ValueError(f"--bh={a.bh}; expected multiples of --heads={a.heads} (B = BH / H)")
    a.out.mkdir(parents=True, exist_ok=True)
    stem = f"{a.name}_{jax.default_backend()}" + ("_quick" if a.quick else "")
    result = {}

    def save(rows):
        result.update({
            "benchmark": "kernels", "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "peaks": dict(zip(("bf16_matmul_flop_per_s", "fp32_flop_per_s", "bytes_per_s"),
                              device_peaks(jax.devices()[0].device_kind))),
            "jax": jax.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "notes": "model FLOPs of the dual form (fwd+bwd = 3x fwd); min bytes = inputs read once, outputs "
                     "written once at 4 bytes; roofline_fraction = max(FLOPs/peak_bf16, bytes/peak_bw) / time",
            "results": rows, "speedup": speedups(rows),
        })
        (a.out / f"{stem}.json").write_text(json.dumps(result, indent=2))

    rows = run(a, save)
    save(rows)
    plot(rows, a.out / f"{stem}.png")
    for s in result["speedup"]:
        print(f"{s['learner']:10s} F={s['F']:3d} T={s['T']:6d} BH={s['BH']:4d} {s['mode']:16s} "
              f"pallas/xla = {s['pallas_over_xla']:.2f}x")
    print(f"wrote {a.out / stem}.json")
    return result


def register(sub) -> None:
    """`ttc bench kernels` (the bench command is shared: other benchmarks add their own subcommands)."""
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    parser(bench_sub.add_parser("kernels", help=__doc__.splitlines()[0])).set_defaults(func=lambda a: main(args=a) and 0)
