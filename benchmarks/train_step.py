"""Train-step throughput, MFU and peak memory on this machine (CPU unless an accelerator is present).

For each model: compile the jitted train step (AdamW, masked loss) on random tokens, time `--reps`
steps after one warm-up, and read XLA's memory analysis of the compiled step (arguments + outputs +
temporaries - aliased = the step's peak device memory). Also: gradient accumulation and remat
peak memory at the same tokens per step, and a jax.profiler trace breakdown by op category.

    python benchmarks/train_step.py --out benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.nn.config import get_config
from ttc_jax.train import metrics as M
from ttc_jax.train import optim, peaks
from ttc_jax.train.config import TrainConfig, model_for_training
from ttc_jax.train.step import TrainState, make_train_step
from ttc_jax.train.trainer import abstract_model, ttt_peak_base_lr, _init_state, _abstract_train_state, make_mesh


def build(preset: str, tcfg: TrainConfig, model_overrides: dict | None = None):
    mcfg = model_for_training(get_config(preset, **(model_overrides or {})), tcfg)
    tx = optim.make_optimizer(tcfg)
    mesh = make_mesh(tcfg.replace(mesh=type(tcfg.mesh)(jax.device_count(), 1, 1)))
    graphdef, _, shardings = _abstract_train_state(mcfg, tcfg, tx, mesh)
    base = ttt_peak_base_lr(mcfg)
    fn = make_train_step(graphdef, tx, tcfg, lr_mult_fn=lambda s: optim.ttt_lr_mult(tcfg, base, s),
                         schedule=optim.lr_schedule(tcfg), with_stats=False)
    return mcfg, tx, shardings, jax.jit(fn, donate_argnums=(0,))


def random_batch(B: int, T: int, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, (B, T + 1), dtype=np.int32)
    return {"inputs": jnp.asarray(toks[:, :-1]), "targets": jnp.asarray(toks[:, 1:]),
            "mask": jnp.ones((B, T), jnp.float32)}


def peak_bytes(compiled) -> int | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def measure(preset: str, tcfg: TrainConfig, reps: int, model_overrides: dict | None = None,
            timed: bool = True, trace_root: str | None = None) -> dict:
    """Compile one train step; with `timed`, the median of `reps` steps after a warm-up; with `trace_root`,
    also a profiled extra step's breakdown by component."""
    mcfg, tx, shardings, step = build(preset, tcfg, model_overrides)
    batch = random_batch(tcfg.batch_size, tcfg.seq_len, mcfg.vocab_size)
    box = [_init_state(mcfg, tcfg, tx, shardings)]
    t0 = time.perf_counter()
    compiled = step.lower(box[0], batch).compile()
    compile_s = time.perf_counter() - t0
    row = {"preset": preset, "model_overrides": model_overrides or {}, "seq_len": tcfg.seq_len,
           "batch_size": tcfg.batch_size, "grad_accum": tcfg.grad_accum, "dtype": tcfg.dtype,
           "remat_layers": mcfg.remat_layers, "remat_group": mcfg.remat_group,
           "peak_bytes": peak_bytes(compiled), "compile_s": compile_s}
    if not timed:
        return row

    def run():
        box[0], met = compiled(box[0], batch)
        jax.block_until_ready(met["loss"])
        return met

    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        met = run()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tps = tcfg.tokens_per_step / step_s
    fpt = M.train_flops_per_token(mcfg, tcfg.seq_len)
    row.update(step_s=step_s, step_s_all=times, tokens_per_s=tps, train_flops_per_token=fpt,
               mfu=M.mfu(tps, fpt, peaks.total_peak_flops()), loss=float(met["loss"]))
    if trace_root is not None:
        row["profile"] = profile_breakdown(compiled, run, os.path.join(trace_root, preset))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="ttt-linear-125m,tiny-hybrid,tiny-transformer,tiny-ttt-linear,tiny-ttt-mlp")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--memory-preset", default="tiny-hybrid")
    ap.add_argument("--memory-batch", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/train_step.json")
    ap.add_argument("--trace-dir", default="/tmp/ttc_train_step_traces")
    ap.add_argument("--attention-ab", default="tiny-transformer,tiny-hybrid",
                    help="presets timed with dense attention (attn_block_size=0) vs the default query blocks")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of --out for presets/sections not re-run (use --memory-preset '' to skip)")
    args = ap.parse_args()
    install_named_scopes()
    out = {"machine": "shared 2-core CPU (other jobs running); timings noisy, compare within this run",
           "devices": str(jax.devices()), "peak_flops": peaks.total_peak_flops(), "throughput": [], "memory": []}
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        rerun = set(args.presets.split(","))
        out["throughput"] = [r for r in old.get("throughput", []) if r["preset"] not in rerun]
        out["memory"] = [] if args.memory_preset else old.get("memory", [])
        out["attention_blocks"] = [] if args.attention_ab else old.get("attention_blocks", [])

    def save():
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)

    # dense masked T x T attention vs query blocks over only the visible keys, same run
    for p in filter(None, args.attention_ab.split(",")):
        t = TrainConfig(steps=100, batch_size=args.batch, seq_len=args.seq_len, warmup_steps=10)
        dense = measure(p, t, max(3, args.reps), {"attn_block_size": 0})
        blocked = measure(p, t, max(3, args.reps))
        row = {"preset": p, "seq_len": args.seq_len, "dense_step_s": dense["step_s"],
               "blocked_step_s": blocked["step_s"], "attn_block_size": get_config(p).attn_block_size,
               "speedup": dense["step_s"] / blocked["step_s"],
               "dense_peak_bytes": dense["peak_bytes"], "blocked_peak_bytes": blocked["peak_bytes"],
               "loss_dense": dense["loss"], "loss_blocked": blocked["loss"]}
        print(json.dumps(row), flush=True)
        out.setdefault("attention_blocks", []).append(row)
        save()

    # peak memory (compiled step's memory analysis) at the same tokens per step
    B = args.memory_batch if args.memory_preset else 0
    variants = [] if not B else [("baseline", dict(batch_size=B), {}),
                (f"grad_accum={B}", dict(batch_size=B, grad_accum=B), {}),
                ("remat_layers", dict(batch_size=B), {"remat_layers": True}),
                ("no inner remat (remat_group=0)", dict(batch_size=B), {"remat_group": 0})]
    for name, tkw, mkw in variants:
        t = TrainConfig(steps=100, seq_len=args.seq_len, warmup_steps=10, **tkw)
        r = measure(args.memory_preset, t, 0, mkw, timed=False)
        r["variant"] = name
        print(json.dumps({k: r[k] for k in ("variant", "peak_bytes")}), flush=True)
        out["memory"].append(r)
        save()
    tcfg = TrainConfig(steps=100, batch_size=args.batch, seq_len=args.seq_len, warmup_steps=10)
    for p in args.presets.split(","):
        r = measure(p, tcfg, args.reps, trace_root=args.trace_dir)
        print(json.dumps({k: r[k] for k in ("preset", "tokens_per_s", "mfu", "peak_bytes")}), flush=True)
        print("  profile:", json.dumps(r["profile"]["fraction"]), flush=True)
        out["throughput"].append(r)
        save()




# --- profile breakdown ------------------------------------------------------------------------------

def install_named_scopes() -> None:
    """Wrap the model's components in jax.named_scope (benchmark process only), so every HLO op's
    op_name (forward and backward) says which component it came from."""
    import functools

    import optax
    from flax import nnx

    from ttc_jax.nn import attention, conv, mlp, ttt_layer
    from ttc_jax.train import step as step_mod

    def scoped(fn, name):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            with jax.named_scope(name):
                return fn(*a, **k)
        return wrapper

    for cls, name in ((ttt_layer.TTTLayer, "ttt_layer"), (attention.Attention, "attention"),
                      (mlp.SwiGLU, "mlp"), (conv.CausalConv, "conv")):
        if not getattr(cls.__call__, "_scoped", False):
            cls.__call__ = scoped(cls.__call__, name)
            cls.__call__._scoped = True
    if not getattr(ttt_layer.ttt, "_scoped", False):
        ttt_layer.ttt = scoped(ttt_layer.ttt, "ttt_inner")
        ttt_layer.ttt._scoped = True
    if not getattr(nnx.Embed.attend, "_scoped", False):
        nnx.Embed.attend = scoped(nnx.Embed.attend, "vocab_loss")
        nnx.Embed.attend._scoped = True
    if not getattr(step_mod.token_losses, "_scoped", False):
        step_mod.token_losses = scoped(step_mod.token_losses, "vocab_loss")
        step_mod.token_losses._scoped = True
    if not getattr(optax.apply_updates, "_scoped", False):
        optax.apply_updates = scoped(optax.apply_updates, "optimizer")
        optax.apply_updates._scoped = True


# (category, op_name scope), first match wins; the inner loop before its enclosing layer
_CATEGORIES = (("ttt_inner_loop", "ttt_inner"), ("ttt_layer_other", "ttt_layer"), ("attention", "attention"),
               ("mlp", "mlp"), ("conv", "conv"), ("vocab_loss", "vocab_loss"), ("optimizer", "optimizer"))


def hlo_metadata(hlo_text: str) -> dict[str, dict]:
    """{instruction name: {"opcode", "op_name", "source_file"}} from compiled HLO text."""
    import re
    out = {}
    pat = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w-]*)\(")
    for line in hlo_text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        meta = {"opcode": m.group(2)}
        for key in ("op_name", "source_file"):
            mm = re.search(key + r'="([^"]*)"', line)
            meta[key] = mm.group(1) if mm else ""
        out[m.group(1)] = meta
    return out


def categorize(meta: dict) -> str:
    """Remat recompute and layout copies first (whatever component they belong to), then by scope."""
    op = meta.get("op_name", "")
    if "remat" in op or "checkpoint" in op:
        return "remat_recompute"
    if meta.get("opcode") in ("copy", "transpose", "copy-start", "copy-done"):
        return "layout_copies"
    for cat, scope in _CATEGORIES:
        if scope in op:
            return cat
    return "other"


def profile_breakdown(compiled, run_step, trace_dir: str) -> dict:
    """Seconds per category of one profiled step (XLA:CPU thunk events matched to HLO metadata)."""
    import glob
    import gzip
    meta = hlo_metadata(compiled.as_text())
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        run_step()
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    by_cat: dict[str, float] = {}
    unmatched = 0.0
    unmatched_ops: dict[str, float] = {}
    for e in events:
        args = e.get("args") or {}
        op = args.get("hlo_op")
        if e.get("ph") != "X" or not op:
            continue
        dur = float(e.get("dur", 0.0)) * 1e-6
        m = meta.get(op)
        if m is None and op.split(".")[0] in ("while", "call", "conditional"):
            continue  # loop/call containers (tuple-shaped, not parsed): their bodies are counted
        if m is None:
            unmatched += dur
            unmatched_ops[op] = unmatched_ops.get(op, 0.0) + dur
            continue
        if m["opcode"] in ("while", "call", "conditional"):
            continue  # containers: their bodies' instructions are counted themselves
        cat = categorize(m)
        by_cat[cat] = by_cat.get(cat, 0.0) + dur
    total = sum(by_cat.values()) + unmatched
    return {"seconds": {k: round(v, 4) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "unmatched_s": round(unmatched, 4), "total_s": round(total, 4),
            "top_unmatched": dict(sorted(unmatched_ops.items(), key=lambda kv: -kv[1])[:5]),
            "fraction": {k: round(v / total, 4) for k, v in by_cat.items()} if total else {}}


if __name__ == "__main__":
    main()
