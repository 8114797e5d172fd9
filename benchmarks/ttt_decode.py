"""Decode step of the TTT core: the commit under lax.cond (shared position) vs a select (per-sample positions).

The traced-position step commits the fast weights only when a mini-batch ends (`lax.cond`). Under
`jax.vmap` over a leading sample axis whose positions differ, JAX turns the cond into a select that
computes the commit every token. Both are timed here on the same inputs: S samples x B rows, one
token at a time, 64 tokens per jitted call (a `lax.scan`), 125m head shape (H=12, F=64, K=16).

    python benchmarks/ttt_decode.py    # writes benchmarks/results/ttt_decode.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.ttt import TTTState, ttt
from ttc_jax.ttt.testing import random_inputs

RESULTS = Path(__file__).parent / "results"
S, B, H, F, K, STEPS = 8, 1, 12, 64, 16, 64


def _median_ms(fn, *args, repeats=7):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    rows = []
    for kind in ("ttt_linear", "ttt_mlp"):
        q, k, v, lr, ts, w, s, b = random_inputs(kind, B=B, H=H, T=STEPS, F=F, K=K, weight_scale=0.02,
                                                 lr_range=(0.001, 0.02))
        _, state = ttt(kind, *random_inputs(kind, B=B, H=H, T=3, F=F, K=K), mini_batch_size=K)
        stack = lambda a: jnp.broadcast_to(a, (S, *a.shape))
        xs = tuple(stack(a) for a in (q, k, v, lr))
        weights, acc = jax.tree.map(stack, state.weights), jax.tree.map(stack, state.acc)

        def decode(q, k, v, lr, weights, acc, pos):  # STEPS tokens, one per scan step
            def step(st, x):
                z, st = ttt(kind, *(a[:, :, None] for a in x), ts, w, s, b, mini_batch_size=K, state=st, impl="xla")
                return st, z
            st, z = jax.lax.scan(step, TTTState(weights, acc, pos), tuple(jnp.moveaxis(a, 2, 0) for a in (q, k, v, lr)))
            return z, st

        shared = jax.jit(jax.vmap(decode, in_axes=(0, 0, 0, 0, 0, 0, None)))  # one position: cond
        per_sample = jax.jit(jax.vmap(decode))  # a position per sample: select
        pos = jnp.arange(S, dtype=jnp.int32) % K
        t_cond = _median_ms(shared, *xs, weights, acc, jnp.int32(3))
        t_select = _median_ms(per_sample, *xs, weights, acc, pos)
        row = {"learner": kind, "ms_per_token_cond": t_cond / STEPS, "ms_per_token_select": t_select / STEPS,
               "select_over_cond": t_select / t_cond}
        rows.append(row)
        print(row)
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "ttt_decode", "backend": jax.default_backend(),
           "shape": {"S": S, "B": B, "H": H, "F": F, "K": K, "tokens_per_call": STEPS}, "results": rows,
           "note": "shared machine; ratios are from the same run"}
    (RESULTS / "ttt_decode.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
