"""Throughput of the TTT inner loop: dual form (impl="xla") vs primal reference, and vs ttt-lm-jax.

Forward and forward+backward tokens/s of `ttc_jax.ttt.ttt_linear` / `ttt_mlp`
at the 125m head shape (H=12, F=64, K=16) for several sequence lengths, all
implementations measured in the same run, interleaved (one call of each per
round), so that a shared machine's load falls on all of them alike. Writes JSON
and a plot to benchmarks/results/.

    python benchmarks/ttt_layer.py                 # T in 512, 2048, 8192
    python benchmarks/ttt_layer.py --quick         # tiny shapes, for CI
    python benchmarks/ttt_layer.py --ttt-lm-jax PATH --lengths 2048 --impls xla xla_autodiff official

With --ttt-lm-jax (a checkout of test-time-training/ttt-lm-jax; never vendored) the official
layer's inner loop (`TTTBase.ttt`: the vmapped scan of `process_mini_batch` with its remat groups)
runs on the same inputs, its eta built from the same lr and token_scale, and every ratio
ours/official is reported with the outputs' and gradients' relative differences. "xla_autodiff"
is this project's dual form before the fused scan (`dual(..., fused=False)`: the segment scanned
under `jax.checkpoint`, differentiated by JAX).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp

from ttc_jax.kernels.bench import build  # the same jitted forward / forward+backward as the kernel benchmark
from ttc_jax.ttt import LEARNERS, ttt
from ttc_jax.ttt.dual import dual
from ttc_jax.ttt.state import init_state
from ttc_jax.ttt.testing import random_inputs

RESULTS = Path(__file__).parent / "results"


def make_inputs(kind, B, H, T, F, K, seed=0):
    """Published-like scales: W0 ~ N(0, 0.02), rates base_lr * sigmoid(.) / F <= 1/F."""
    return random_inputs(kind, B=B, H=H, T=T, F=F, K=K, seed=seed, weight_scale=0.02, lr_range=(0.0, 1.0 / F))


GRAD_ARGNUMS = (0, 1, 2, 3, 5)  # q, k, v, lr, weights (as kernels.bench.build)


def _with_grads(forward, mode):
    if mode == "forward":
        return jax.jit(forward)
    return jax.jit(jax.value_and_grad(lambda *a: forward(*a).astype(jnp.float32).mean(), argnums=GRAD_ARGNUMS))


def build_autodiff(kind, mode, K, remat_group=4):
    """Our dual form before the fused scan: `Learner.segment` under jax.checkpoint, JAX's backward."""
    def forward(q, k, v, lr, ts, w, lns, lnb):
        return dual(LEARNERS[kind], q, k, v, lr, ts, init_state(w, q.shape[0]), lns, lnb, 1e-6,
                    remat_group=remat_group, fused=False)[0]
    return _with_grads(forward, mode)


def build_xla_group(kind, mode, K, remat_group):
    """impl "xla@G": the XLA path with remat groups of G mini-batches."""
    def forward(q, k, v, lr, ts, w, lns, lnb):
        return ttt(kind, q, k, v, lr, ts, w, lns, lnb, mini_batch_size=K, impl="xla", remat_group=remat_group)[0]
    return _with_grads(forward, mode)


def load_official(path):
    """ttt-lm-jax's ttt/models/ttt_layer.py, imported from a checkout without its training stack.

    Its only project import (ttt.infra.jax_utils, which pulls torch, transformers, wandb, ...) is
    given two small stand-ins while the file loads; sys.modules is restored afterwards."""
    src = Path(path) / "ttt" / "models" / "ttt_layer.py"
    if not src.is_file():
        raise ValueError(f"--ttt-lm-jax {path!r}: {src} not found; expected a ttt-lm-jax checkout")
    utils = types.ModuleType("ttt.infra.jax_utils")
    utils.with_sharding_constraint = lambda x, spec: x
    utils.get_gradient_checkpoint_policy = lambda name: None
    stubs = {"ttt": types.ModuleType("ttt"), "ttt.infra": types.ModuleType("ttt.infra"), "ttt.infra.jax_utils": utils}
    saved = {n: sys.modules.get(n) for n in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("_ttt_lm_jax_ttt_layer", src)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return module


def build_official(module, kind, mode, args, K, remat_group=4):
    """The official inner loop on our argument order; z returned as [B, H, T, F]."""
    q, k, v, lr, ts, w, lns, lnb = args
    B, H, T, F = q.shape
    config = types.SimpleNamespace(
        hidden_size=H * F, num_attention_heads=H, mini_batch_size=K, max_sequence_length=T, rope_theta=10000.0,
        initializer_range=0.02, remat_mini_batch_group_size=remat_group, ttt_base_lr=1.0, conv_width=4,
        remat_conv="", output_ttt_stats=False)
    layer = (module.TTTLinear if kind == "ttt_linear" else module.TTTMLP)(config=config)
    split = lambda a: a.reshape(B, H, T // K, K, *a.shape[3:])
    eta = lambda lr, ts: ts[:, None] * split(lr)[..., None, :]  # eta[i, j] = s_i lr_j: base_lr / F are in lr
    others = layer.init(jax.random.PRNGKey(0), split(q), split(k), split(v), eta(lr, ts), None,
                        method="ttt")["params"]

    def forward(q, k, v, lr, ts, w, lns, lnb):
        params = {**others, "ttt_dense_0": w["w1"], "ttt_bias_0": w["b1"], "ttt_norm/scale": lns, "ttt_norm/bias": lnb}
        if "w2" in w:
            params.update({"ttt_dense_1": w["w2"], "ttt_bias_1": w["b2"]})
        z, _ = layer.apply({"params": params}, split(q), split(k), split(v), eta(lr, ts), None, method="ttt")
        return z.reshape(B, T, H, F).transpose(0, 2, 1, 3)
    return _with_grads(forward, mode)


def rel_diff(a, b):
    """max |a - b| / max |b| over all leaves."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(jnp.abs(x - y).max() / jnp.maximum(jnp.abs(y).max(), 1e-30)) for x, y in zip(la, lb))


def time_interleaved(fns, args, repeats):
    """{name: (first-call seconds, [wall seconds], [process CPU seconds])}: one call of each per round."""
    out = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out[name] = (time.perf_counter() - t0, [], [])
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            out[name][1].append(time.perf_counter() - t0)
            out[name][2].append(time.process_time() - c0)
    return out


def run(lengths, B, H, F, K, kinds, impls, modes, min_repeats, official=None, remat_group=4):
    rows, checks = [], []
    for kind in kinds:
        for T in lengths:
            args = make_inputs(kind, B, H, T, F, K)
            for mode in modes:
                fns = {}
                for impl in impls:
                    if impl == "official":
                        fns[impl] = build_official(official, kind, mode, args, K, remat_group)
                    elif impl == "xla_autodiff":
                        fns[impl] = build_autodiff(kind, mode, K, remat_group)
                    elif impl.startswith("xla@"):
                        fns[impl] = build_xla_group(kind, mode, K, int(impl[4:]))
                    else:
                        fns[impl] = build(kind, impl, mode, K)
                try:
                    timings = time_interleaved(fns, args, min_repeats)
                except jax.errors.JaxRuntimeError as e:  # e.g. the primal form's per-token residuals
                    if "RESOURCE_EXHAUSTED" not in str(e):
                        raise
                    timings = {}  # out of memory: time each implementation alone, record which ones fail
                    for impl, fn in fns.items():
                        try:
                            timings.update(time_interleaved({impl: fn}, args, min_repeats))
                        except jax.errors.JaxRuntimeError as e1:
                            if "RESOURCE_EXHAUSTED" not in str(e1):
                                raise
                            rows.append({"learner": kind, "impl": impl, "mode": mode, "T": T,
                                         "error": str(e1).splitlines()[0][:200]})
                            print(f"{kind:10s} {mode:16s} T={T:5d} {impl:13s} {str(e1).splitlines()[0][:90]}")
                for impl, (first, walls, cpus) in timings.items():
                    sec = statistics.median(walls)
                    rows.append({"learner": kind, "impl": impl, "mode": mode, "T": T, "seconds": sec,
                                 "min_seconds": min(walls), "cpu_seconds": statistics.median(cpus),
                                 "repeats": len(walls), "first_call_seconds": first, "tokens_per_s": B * T / sec})
                    print(f"{kind:10s} {mode:16s} T={T:5d} {impl:13s} median {sec * 1e3:9.2f} ms  min "
                          f"{min(walls) * 1e3:9.2f} ms  cpu {statistics.median(cpus) * 1e3:9.2f} ms "
                          f"{B * T / sec:12,.0f} tok/s")
                if "official" in fns and "xla" in fns:  # same semantics: outputs (and gradients) agree
                    ours, theirs = fns["xla"](*args), fns["official"](*args)
                    checks.append({"learner": kind, "mode": mode, "T": T,
                                   "rel_diff_xla_vs_official": rel_diff(ours, theirs)})
                    print(f"{kind:10s} {mode:16s} T={T:5d} xla vs official: relative difference "
                          f"{checks[-1]['rel_diff_xla_vs_official']:.2e}")
    return rows, checks


def speedups(rows, baseline="reference", impl="xla"):
    """baseline time / impl time per (learner, mode, T): from the medians, the minima and CPU times."""
    key = lambda r: (r["learner"], r["mode"], r["T"])
    base = {key(r): r for r in rows if r["impl"] == baseline and "seconds" in r}
    out = []
    for r in rows:
        if r["impl"] == impl and key(r) in base and "seconds" in r:
            b = base[key(r)]
            row = {"learner": r["learner"], "mode": r["mode"], "T": r["T"],
                   f"{impl}_over_{baseline}": b["seconds"] / r["seconds"]}
            if "min_seconds" in r and "min_seconds" in b:
                row["from_minima"] = b["min_seconds"] / r["min_seconds"]
                row["from_cpu_time"] = b["cpu_seconds"] / r["cpu_seconds"]
            out.append(row)
    return out


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = sorted({r["learner"] for r in rows})
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    if len({r["T"] for r in rows}) == 1:  # one length: bars of tokens/s per impl and mode
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        for ax, kind in zip(axes[0], kinds):
            for j, mode in enumerate(modes):
                tps = {r["impl"]: r.get("tokens_per_s", 0.0) for r in rows if r["learner"] == kind and r["mode"] == mode}
                xs = [i + 0.4 * j for i in range(len(impls))]
                ax.bar(xs, [tps.get(i, 0.0) for i in impls], width=0.4, label=mode)
            ax.set_xticks([i + 0.2 for i in range(len(impls))], impls, rotation=20, fontsize=8)
            ax.set(ylabel="tokens/s", title=f"{kind}, T={rows[0]['T']}")
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    for ax, kind in zip(axes[0], kinds):
        for mode in modes:
            styles = {"xla": "-o", "reference": "--s", "xla_autodiff": ":^", "official": "-.d"}
            for impl in sorted({r["impl"] for r in rows}, key=lambda i: (i not in styles, i)):
                style = styles.get(impl, "-x")
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
    p.add_argument("--name", default=None, help="output name (default ttt_layer, or ttt_layer_vs_official)")
    p.add_argument("--kinds", nargs="+", default=["ttt_linear", "ttt_mlp"], choices=sorted(LEARNERS))
    p.add_argument("--impls", nargs="+", default=None,
                   help="among xla, reference, xla_autodiff, official, xla@G (remat groups of G) "
                        "(default: xla reference, + official)")
    p.add_argument("--remat-group", type=int, default=4, help="remat group of xla_autodiff and official")
    p.add_argument("--ttt-lm-jax", type=Path, default=None, metavar="PATH",
                   help="a ttt-lm-jax checkout: also time its inner loop on the same inputs")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. the machine's load)")
    a = p.parse_args(argv)
    if a.quick:
        a.lengths, a.heads, a.head_dim, a.mini_batch, a.repeats = [20], 2, 8, 8, 1
    impls = a.impls or (["xla", "reference"] + (["official"] if a.ttt_lm_jax else []))
    if "official" in impls and a.ttt_lm_jax is None:
        raise ValueError("--impls official needs --ttt-lm-jax PATH")
    if "official" in impls and any(t % a.mini_batch for t in a.lengths):
        raise ValueError(f"--lengths {a.lengths}: the official layer needs multiples of --mini-batch {a.mini_batch}")
    official = load_official(a.ttt_lm_jax) if a.ttt_lm_jax else None
    name = a.name or ("ttt_layer_vs_official" if official else "ttt_layer")
    rows, checks = run(a.lengths, a.batch, a.heads, a.head_dim, a.mini_batch, a.kinds, impls,
                       ["forward", "forward_backward"], a.repeats, official, a.remat_group)
    baselines = [b for b in ("reference", "xla_autodiff", "official") if b in impls]
    result = {
        "benchmark": "ttt_layer",
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__, "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
        "shape": {"B": a.batch, "H": a.heads, "F": a.head_dim, "K": a.mini_batch},
        "timing": "interleaved rounds, one call of each impl per round; seconds = median wall, also min and "
                  "median process CPU time", "note": a.note,
        "results": rows, "speedup": [s for b in baselines for s in speedups(rows, baseline=b)],
        "xla_vs_official": checks,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    json_path = a.out / f"{name}_{jax.default_backend()}.json"
    json_path.write_text(json.dumps(result, indent=2))
    plot(rows, a.out / f"{name}_{jax.default_backend()}.png")
    for s in result["speedup"]:
        ratio = next(k for k in s if k.startswith("xla_over_"))
        extra = f" (minima {s['from_minima']:.2f}x, CPU time {s['from_cpu_time']:.2f}x)" if "from_minima" in s else ""
        print(f"{s['learner']:10s} {s['mode']:16s} T={s['T']:5d} {ratio} = {s[ratio]:.2f}x{extra}")
    print(f"wrote {json_path}")
    return result


if __name__ == "__main__":
    main()
