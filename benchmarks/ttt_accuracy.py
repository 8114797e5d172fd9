"""Dual form vs primal definition: relative errors of outputs, states and gradients in float64.

    python benchmarks/ttt_accuracy.py    # writes benchmarks/results/ttt_accuracy.json
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.ttt import ttt
from ttc_jax.ttt.testing import random_inputs

RESULTS = Path(__file__).parent / "results"


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def state_rel(s, sr):
    """Relative error of the carried state: committed weights and accumulated gradients (acc)."""
    return max(max(rel(s.weights[n], sr.weights[n]), rel(s.acc[n], sr.acc[n])) for n in s.weights)


def main():
    rows = []
    with jax.enable_x64(True):
        for kind in ("ttt_linear", "ttt_mlp"):
            for T in (1, 15, 16, 17, 100):
                args = random_inputs(kind, T=T, F=16, dtype=jnp.float64)
                run = lambda impl: jax.jit(lambda *a: ttt(kind, *a, impl=impl))
                z, s = run("xla")(*args)
                zr, sr = run("reference")(*args)
                loss = lambda impl: lambda *a: (ttt(kind, *a, impl=impl)[0] ** 2).sum()
                g = jax.jit(jax.grad(loss("xla"), argnums=tuple(range(8))))(*args)
                gr = jax.jit(jax.grad(loss("reference"), argnums=tuple(range(8))))(*args)
                row = {"learner": kind, "T": T, "z_rel_err": rel(z, zr),
                       "state_rel_err": state_rel(s, sr),
                       "grad_rel_err": max(rel(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gr)))}
                rows.append(row)
                print(row)
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "ttt_accuracy", "dtype": "float64", "shape": {"B": 2, "H": 3, "F": 16, "K": 16},
           "results": rows, "max_rel_err": max(max(r["z_rel_err"], r["state_rel_err"], r["grad_rel_err"])
                                               for r in rows)}
    (RESULTS / "ttt_accuracy.json").write_text(json.dumps(out, indent=2))
    print("max relative error:", out["max_rel_err"])


if __name__ == "__main__":
    main()
