"""The hand-written VJP of one mini-batch (kernels/common/minibatch_vjp) and the TPU backward kernel built on it.

Oracles: `jax.vjp` of `minibatch.step` per mini-batch (random inputs and cotangents, L = 1 and 2, float32 and
float64); for the kernel, `jax.vjp` of a loop of `minibatch.step` over a whole sequence, every output compared,
in the generic interpreter and under the TPU race detector. The dot count of the kernel body is checked too.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

from ttc_jax.kernels.common import minibatch, minibatch_vjp, tpu_backward, tpu_forward
from ttc_jax.kernels.common.registry import KernelSpec
from ttc_jax.ttt import LEARNERS

KINDS = {1: "ttt_linear", 2: "ttt_mlp"}
EPS = 1e-6


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@dataclasses.dataclass(frozen=True)
class Dots64(minibatch.Dots):
    """Products in the operands' dtype (float64 here; `Dots` accumulates in float32)."""

    def _dot(self, a, b, dims):
        return jax.lax.dot_general(a, b, (dims, ((), ())), precision=jax.lax.Precision.HIGHEST)


def _inputs(n_layers, K, F, dtype, seed, n_seq=None):
    """Random primals (ws, q, k, v, lr, s, ln_scale, ln_bias) of one mini-batch, or of n_seq sequences."""
    rng = np.random.default_rng(seed)
    lead = () if n_seq is None else (n_seq,)
    rows = K
    r = lambda *sh, scale=1.0: jnp.asarray(scale * rng.standard_normal(lead + sh), dtype)
    shapes = LEARNERS[KINDS[n_layers]].weight_shapes(1, F)
    ws = tuple(r(*shapes[f"{p}{i}"][1:], scale=0.3) for i in range(1, n_layers + 1) for p in ("w", "b"))
    u = lambda *sh: jnp.asarray(rng.uniform(0.2, 1.0, lead + sh), dtype)
    return ws, r(rows, F), r(rows, F), r(rows, F), u(rows, 1), u(K, 1), 1.0 + r(1, F, scale=0.2), r(1, F, scale=0.2)


@functools.cache
def _vjp_both(n_layers, dtype, dots, seed=0, K=8, F=8):
    """(step's outputs, step_fwd's outputs, jax.vjp's gradients, step_bwd's gradients, residuals, cotangents)."""
    primals = _inputs(n_layers, K, F, dtype, seed)
    rng = np.random.default_rng(seed + 100)
    dz = jnp.asarray(rng.standard_normal((K, F)), dtype)
    dws = tuple(jnp.asarray(rng.standard_normal(w.shape), dtype) for w in primals[0])
    step = lambda *a: minibatch.step(*a, EPS, dots)

    @jax.jit
    def oracle(primals, cts):
        out, vjp = jax.vjp(step, *primals)
        return out, vjp(cts)

    @jax.jit
    def hand(primals, cts):
        z, ws_new, res = minibatch_vjp.step_fwd(*primals, EPS, dots)
        return (z, ws_new), minibatch_vjp.step_bwd(res, *cts, EPS, dots), res

    (out, ref), (out2, got, res) = oracle(primals, (dz, dws)), hand(primals, (dz, dws))
    return out, out2, ref, got, res, (dz, dws)


NAMES = ("dws", "dq", "dk", "dv", "dlr", "ds", "dln_scale", "dln_bias")


@pytest.mark.parametrize("n_layers,dtype,tol", [
    (1, "float32", 1e-5), (2, "float32", 1e-5),
    *(pytest.param(n, "float64", 1e-12, marks=pytest.mark.slow) for n in (1, 2))])
def test_hand_written_vjp_matches_jax_vjp(n_layers, dtype, tol):
    with jax.enable_x64(dtype == "float64"):
        dots = minibatch.F32 if dtype == "float32" else Dots64()
        out, out2, ref, got, _, _ = _vjp_both(n_layers, getattr(jnp, dtype), dots)
        # the forward half is minibatch.step, bit for bit
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out2)):
            np.testing.assert_array_equal(a, b)
        for name, g, g0 in zip(NAMES, got, ref):
            leaves, leaves0 = jax.tree.leaves(g), jax.tree.leaves(g0)
            assert len(leaves) == len(leaves0), name
            for leaf, leaf0 in zip(leaves, leaves0):
                assert leaf.shape == leaf0.shape and leaf.dtype == leaf0.dtype, name
                assert np.linalg.norm(np.asarray(leaf0, np.float64)) > 1e-3, name  # not a trivial cotangent
                assert rel(leaf, leaf0) < tol, (name, rel(leaf, leaf0))


def test_the_vjp_check_can_fail():
    """A backward that reads the causal products without their mask (A_l = Xq_l X_l^T + 1) is caught."""
    _, _, ref, good, res, (dz, dws) = _vjp_both(1, jnp.float32, minibatch.F32)
    unmasked = minibatch.F32.mm_nt(res.xqs[0], res.xs[0]) + 1.0
    bad = jax.jit(lambda res: minibatch_vjp.step_bwd(res, dz, dws, EPS))(res._replace(amats=(unmasked,)))
    assert rel(good[2], ref[2]) < 1e-5 < 1e-2 < rel(bad[2], ref[2])  # dk


# -- the backward kernel against jax.vjp of the mini-batch loop, every output ------------------------------

def _sequence_oracle(n_layers, q, k, v, lr, s, ws0, gam, bet, dz, dws_end, group, K):
    """Per-sequence jax.vjp of a loop of minibatch.step: (ws_bounds, gradients in the kernel's layout)."""
    N, T, F = q.shape

    def one(q, k, v, lr, s, ws, gam, bet):
        def body(ws, x):
            z, new = minibatch.step(ws, *x, s, gam, bet, EPS)
            return new, (z, ws)

        blocks = tuple(a.reshape(T // K, K, a.shape[-1]) for a in (q, k, v, lr))
        ws, (zs, starts) = jax.lax.scan(body, ws, blocks)
        return (zs.reshape(T, F), ws), tuple(w[::group] for w in starts)

    def grads(q, k, v, lr, ws, gam, bet, dz, dws):
        (out, vjp, bounds) = jax.vjp(one, q, k, v, lr, s, ws, gam, bet, has_aux=True)
        return vjp((dz, dws)), bounds

    (dq, dk, dv, dlr, ds, dws0, dg, db), bounds = jax.vmap(grads)(q, k, v, lr, ws0, gam, bet, dz, dws_end)
    return bounds, (dq, dk, dv, dlr, ds, dws0, dg, db)


@pytest.mark.parametrize("n_layers,mode", [
    (2, "generic"), pytest.param(1, "generic", marks=pytest.mark.slow),  # L = 1: also test_ttt_kernels' default
    *(pytest.param(n, m, marks=pytest.mark.slow) for m in ("races", "bf16") for n in (1, 2))])
def test_backward_kernel_matches_jax_vjp_of_the_loop(n_layers, mode):
    """mode: "generic" interpreter, "races" (pltpu.InterpretParams(detect_races=True)), "bf16" (bf16 matmul
    operands with float32 accumulation, against the float32 oracle)."""
    detect_races, bf16 = mode == "races", mode == "bf16"
    N, K, F, group, n_groups = 2, 8, 8, 2, 2
    T = K * group * n_groups
    ws0, *_ = _inputs(n_layers, K, F, jnp.float32, 3, n_seq=N)
    rng = np.random.default_rng(4)
    r = lambda *sh: jnp.asarray(rng.standard_normal(sh), jnp.float32)
    q, k, v, dz = (r(N, T, F) for _ in range(4))
    lr = jnp.asarray(rng.uniform(0.2, 1.0, (N, T, 1)), jnp.float32)
    s = jnp.asarray(rng.uniform(0.2, 1.0, (K, 1)), jnp.float32)
    gam, bet = 1.0 + 0.2 * r(N, 1, F), 0.2 * r(N, 1, F)
    dws_end = tuple(r(*w.shape) for w in ws0)
    args = (q, k, v, lr, s, ws0, gam, bet, dz, dws_end)
    ws_bounds, ref = jax.jit(functools.partial(_sequence_oracle, n_layers, group=group, K=K))(*args)
    spec = KernelSpec(learner=LEARNERS[KINDS[n_layers]], backend="tpu", group=group, eps=EPS, interpret=True,
                      detect_races=detect_races, matmul_dtype="bfloat16" if bf16 else None)

    @jax.jit
    def kernels(q, k, v, lr, s, ws0, gam, bet, dz, dws_end):
        _, _, bounds = tpu_forward.forward(spec, q, k, v, lr, s, ws0, gam, bet)
        return bounds, tpu_backward.backward(spec, q, k, v, lr, s, bounds, gam, bet, dz, dws_end)

    fwd_bounds, got = kernels(*args)
    for a, b in zip(fwd_bounds, ws_bounds):  # the forward kernel's boundary states are the loop's
        assert rel(a, b) < (2e-2 if bf16 else 1e-6)
    for name, g, g0 in zip(NAMES[1:5] + ("ds", "dws0", "dln_scale", "dln_bias"), got, ref):
        for leaf, leaf0 in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
            assert leaf.shape == leaf0.shape, name
            assert (0 < rel(leaf, leaf0) < 5e-2) if bf16 else rel(leaf, leaf0) < 1e-5, (name, rel(leaf, leaf0))
    if detect_races:
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
        assert tpu_interpreter.races is not None, "the race detector did not run"
        assert not tpu_interpreter.races.races_found


# -- the dots of the backward kernel: one forward, not two --------------------------------------------------

def dot_flops(jaxpr) -> tuple[int, int]:
    """(FLOPs, count) of the dot_generals in a jaxpr, scan bodies times their length, cond: the costliest branch."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    flops = count = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            flops += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
            count += 1
        assert name != "while", "a loop without a static trip count"
        subs = [x for p in eqn.params.values() for x in (p if isinstance(p, (tuple, list)) else [p])
                if isinstance(x, (jcore.Jaxpr, jcore.ClosedJaxpr))]
        parts = [dot_flops(sub) for sub in subs]
        if name == "cond":
            parts = [max(parts, default=(0, 0))]
        times = eqn.params["length"] if name == "scan" else 1
        flops += times * sum(p[0] for p in parts)
        count += times * sum(p[1] for p in parts)
    return flops, count


def per_minibatch_dots(n_layers, F, K=16, group=4, xla_flops=False):
    """Dot FLOPs per mini-batch: the step, the backward kernel's body, the old (update + jax.vjp) and new bodies."""
    sd = lambda *sh: jax.ShapeDtypeStruct(sh, jnp.float32)
    shapes = LEARNERS[KINDS[n_layers]].weight_shapes(1, F)
    ws = tuple(sd(*shapes[f"{p}{i}"][1:]) for i in range(1, n_layers + 1) for p in ("w", "b"))
    x, c, row = sd(K, F), sd(K, 1), sd(1, F)
    primals = (ws, x, x, x, c, c, row, row)
    step = lambda *a: minibatch.step(*a, EPS)
    count = lambda f, *a: dot_flops(jax.make_jaxpr(f)(*a))
    res = jax.eval_shape(lambda *a: minibatch_vjp.step_fwd(*a, EPS)[2], *primals)
    old = (count(lambda ws, q, k, v, lr, s, g, b: minibatch.update(ws, k, v, lr, s, g, b, EPS), *primals),
           count(lambda p, ct: jax.vjp(step, *p)[1](ct), primals, (x, ws)))
    new = (count(lambda *a: minibatch_vjp.step_fwd(*a, EPS), *primals),
           count(lambda r, dz, dws: minibatch_vjp.step_bwd(r, dz, dws, EPS), res, x, ws))
    N, T = 1, 2 * group * K
    spec = KernelSpec(learner=LEARNERS[KINDS[n_layers]], backend="tpu", group=group, eps=EPS, interpret=True)
    X, LN = sd(N, T, F), sd(N, 1, F)
    ws1 = tuple(sd(N, *w.shape) for w in ws)
    wb = tuple(sd(N, 2, *w.shape) for w in ws)
    jaxpr = jax.make_jaxpr(functools.partial(tpu_backward.backward, spec))(X, X, X, sd(N, T, 1), c, wb, LN, LN, X, ws1)
    (kernel_eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "pallas_call"]
    kf, kc = dot_flops(kernel_eqn.params["jaxpr"])
    out = dict(step=count(step, *primals), kernel=(kf // group, kc // group),
               old=tuple(map(sum, zip(*old))), new=tuple(map(sum, zip(*new))))
    if xla_flops:  # XLA's count (elementwise included) of the same functions compiled here
        xla = lambda f, *a: jax.jit(f).trace(*a).lower().compile().cost_analysis()["flops"]
        out["xla_old"] = (xla(lambda ws, q, k, v, lr, s, g, b: minibatch.update(ws, k, v, lr, s, g, b, EPS), *primals)
                          + xla(lambda p, ct: jax.vjp(step, *p)[1](ct), primals, (x, ws)))
        out["xla_new"] = (xla(lambda *a: minibatch_vjp.step_fwd(*a, EPS), *primals)
                          + xla(lambda r, dz, dws: minibatch_vjp.step_bwd(r, dz, dws, EPS), res, x, ws))
    return out


@pytest.mark.parametrize("n_layers", [1, 2])
def test_backward_kernel_runs_each_minibatch_forward_once(n_layers):
    d = per_minibatch_dots(n_layers, F=64)
    assert d["kernel"] == d["new"]
    assert d["new"][0] == 3 * d["step"][0]  # the forward once + a backward of two forwards' FLOPs
    assert d["new"][0] < d["old"][0] and d["new"][1] < d["old"][1]
    # the forward's FLOP model (used in the kernels' cost estimates) counts the same dots
    widths = [(64, 64)] if n_layers == 1 else [(64, 256), (256, 64)]
    assert d["step"][0] == 16 * minibatch.flops_per_token(widths, 16)


if __name__ == "__main__":  # the table in kernels/README.md
    for L, kind in KINDS.items():
        for F in (64, 128):
            d = per_minibatch_dots(L, F, xla_flops=True)
            print(f"{kind} F={F} K=16: step {d['step'][0]:,} ({d['step'][1]} dots); backward per mini-batch "
                  f"before {d['old'][0]:,} ({d['old'][1]}), after {d['new'][0]:,} ({d['new'][1]}), "
                  f"kernel body {d['kernel'][0]:,}; after/before {d['new'][0] / d['old'][0]:.3f}; "
                  f"XLA cost_analysis after/before {d['xla_new'] / d['xla_old']:.3f}")
