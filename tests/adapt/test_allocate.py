"""allocate: the integer (N, steps) optimum against a brute-force search, the closed-form s* against a
numerical maximiser, and the seed text's formula shown wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from ttc_jax.nn.config import get_config
from ttc_jax.scaling.allocate import (AdaptationGain, adaptation_step_flops, allocate, allocate_shared,
                                      fit_adaptation_gain,
                                      optimal_steps, sample_flops, ttt_adapt_flops)
from ttc_jax.scaling.flops import forward_flops, training_flops


def brute_force(B, c0, c1, gain, max_steps=None, fixed=0.0):
    """Every feasible (N, s): N * (c0 + c1 s) + fixed <= B. Returns (best objective N h(s), set of argmax)."""
    room = B - fixed
    s_hi = int((room - c0) // c1) if max_steps is None else min(max_steps, int((room - c0) // c1))
    best, arg = -1.0, set()
    for s in range(s_hi + 1):
        h = gain.h0 * (1 + s / gain.s0) ** gain.beta
        for n in range(1, int(room // (c0 + c1 * s)) + 1):
            if n * (c0 + c1 * s) > room:
                continue
            f = n * h
            if f > best * (1 + 1e-12):
                best, arg = f, {(n, s)}
            elif f >= best * (1 - 1e-12):
                arg.add((n, s))
    return best, arg


@pytest.mark.parametrize("case", range(60))
def test_allocate_matches_brute_force(case):
    rng = np.random.default_rng(case)
    c0 = float(rng.uniform(1, 10))
    c1 = float(c0 * 10 ** rng.uniform(-2, 0.5))
    gain = AdaptationGain(h0=float(rng.uniform(0.01, 1)), s0=float(10 ** rng.uniform(-1, 1.5)),
                          beta=float(rng.uniform(0.05, 0.95)))
    B = float(c0 * rng.uniform(1, 60))
    max_steps = None if case % 3 else int(rng.integers(0, 6))
    fixed = 0.0 if case % 4 else float(rng.uniform(0, B - c0))
    a = allocate(B, sample_flops=c0, step_flops=c1, gain=gain, max_steps=max_steps, fixed_flops=fixed)
    best, arg = brute_force(B, c0, c1, gain, max_steps, fixed)
    assert (a.n, a.steps) in arg, (a, best, arg)
    assert a.total_flops <= B * (1 + 1e-12) and a.steps <= (max_steps if max_steps is not None else a.steps)
    np.testing.assert_allclose(a.success, -math.expm1(-best), rtol=1e-12)
    budget_per_sample, n = a  # the recipe's unpacking
    assert n == a.n and budget_per_sample == c0 + c1 * a.steps


def test_allocate_shared_matches_brute_force():
    """One copy adapted once for all N samples: the best N h(s) over every feasible (N, s) with
    fixed + s c1 + N c0 <= B; adapting pays sooner than with a copy per sample."""
    rng = np.random.default_rng(0)
    for case in range(40):
        c0 = float(rng.uniform(1, 10))
        c1 = float(c0 * 10 ** rng.uniform(0, 2))  # a step costs 1-100 samples
        gain = AdaptationGain(h0=float(rng.uniform(0.01, 1)), s0=float(10 ** rng.uniform(-1.5, 1)),
                              beta=float(rng.uniform(0.05, 0.99)))
        max_steps, fixed = int(rng.integers(0, 9)), float(rng.uniform(0, 5))
        B = float(fixed + c0 * rng.uniform(1, 400))
        a = allocate_shared(B, sample_flops=c0, step_flops=c1, gain=gain, max_steps=max_steps, fixed_flops=fixed)
        best = max((n * gain.hazard(s), n, s) for s in range(max_steps + 1)
                   for n in range(1, int((B - fixed) // c0) + 2) if fixed + s * c1 + n * c0 <= B)
        np.testing.assert_allclose(a.n * gain.hazard(a.steps), best[0], rtol=1e-12)
        assert a.total_flops <= B * (1 + 1e-12)
    gain = AdaptationGain(0.1, 0.1, 0.5)
    shared = allocate_shared(1000.0, sample_flops=1.0, step_flops=50.0, gain=gain, max_steps=8)
    per_copy = allocate(1000.0, sample_flops=1.0, step_flops=50.0, gain=gain, max_steps=8)
    assert shared.steps > 0 and per_copy.steps == 0
    with pytest.raises(ValueError, match="below the cost of one sample"):
        allocate_shared(1.0, sample_flops=2.0, step_flops=1.0, gain=gain, max_steps=2)
    with pytest.raises(ValueError, match="max_steps=-1"):
        allocate_shared(10.0, sample_flops=2.0, step_flops=1.0, gain=gain, max_steps=-1)


@pytest.mark.parametrize("beta,c0,c1,s0", [(0.5, 10.0, 1.0, 1.0), (0.3, 4.0, 0.5, 2.0), (0.8, 1.0, 1.0, 5.0),
                                           (0.2, 100.0, 1.0, 3.0)])
def test_closed_form_steps_maximise_hazard_per_flop(beta, c0, c1, s0):
    gain = AdaptationGain(h0=0.2, s0=s0, beta=beta)
    r = lambda s: gain.hazard(s) / (c0 + c1 * s)
    num = minimize_scalar(lambda s: -r(s), bounds=(0.0, 1e4), method="bounded", options={"xatol": 1e-9}).x
    np.testing.assert_allclose(optimal_steps(c0, c1, gain), num, rtol=1e-4, atol=1e-5)


def test_n_grows_linearly_with_the_budget_unlike_the_seed_formula():
    gain, c0, c1 = AdaptationGain(h0=0.1, s0=1.0, beta=0.5), 10.0, 1.0
    s_star = optimal_steps(c0, c1, gain)  # (0.5 * 10 - 1) / 0.5 = 8
    assert s_star == pytest.approx(8.0)
    for B in (1e3, 1e4, 1e5, 1e6):  # per-sample budget -> c(s*) = 18 FLOPs, N -> B / 18 (integer effects shrink)
        a = allocate(B, sample_flops=c0, step_flops=c1, gain=gain)
        assert abs(a.steps - 8) <= 2 and abs(a.n * 18 / B - 1) < 2000 / B
    # the seed's objective N (B/N)^b = B^b N^(1-b) is monotone in N: its optimum is a corner, not B^(b/(1+b))
    B, b = 1000.0, 0.5
    n = np.arange(1, 1001)
    assert np.argmax(n * (B / n) ** b) + 1 == 1000 != int(B ** (b / (1 + b)))


def test_no_adaptation_when_it_does_not_pay():
    gain = AdaptationGain(h0=0.1, s0=20.0, beta=0.3)  # beta c0 = 3 < c1 s0 = 20
    a = allocate(100.0, sample_flops=10.0, step_flops=1.0, gain=gain)
    assert optimal_steps(10.0, 1.0, gain) == 0.0 and (a.n, a.steps) == (10, 0)


def test_flop_helpers_use_the_scaling_accounting():
    cfg = get_config("tiny-hybrid")
    assert adaptation_step_flops(cfg, 65) > 0 and sample_flops(cfg, 64, 16) > 0
    assert sample_flops(cfg, 64, 16, prm_cfg=cfg) > sample_flops(cfg, 64, 16)
    step = training_flops(cfg, 64).total  # the model runs on prefix[:, :-1]
    assert adaptation_step_flops(cfg, 65) == step
    assert ttt_adapt_flops(cfg, 65, 3) == 3 * step + forward_flops(cfg, 64, keep_state=False).total
    with pytest.raises(ValueError, match="prefix_len=1; expected an int >= 2"):
        adaptation_step_flops(cfg, 1)
    with pytest.raises(ValueError, match="steps=-1"):
        ttt_adapt_flops(cfg, 65, -1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_budget=5.0), "total_budget=5.0 is below the cost of one sample"),
    (dict(total_budget=0.0), "total_budget=0.0; expected a finite number > 0"),
    (dict(sample_flops=-1.0), "sample_flops=-1.0"),
    (dict(step_flops=0.0), "step_flops=0.0"),
    (dict(max_steps=-1), "max_steps=-1"),
    (dict(fixed_flops=-1.0), "fixed_flops=-1.0"),
    (dict(total_budget=20.0, fixed_flops=15.0), "below the cost of one sample"),
    (dict(gain=(0.1, 1.0, 0.5)), "gain="),
])
def test_bad_allocation_inputs(kwargs, match):
    args = dict(total_budget=100.0, sample_flops=10.0, step_flops=1.0, gain=AdaptationGain(0.1, 1.0, 0.5))
    with pytest.raises(ValueError, match=match):
        allocate(**{**args, **kwargs})


@pytest.mark.parametrize("kwargs,match", [(dict(beta=1.0), "beta=1.0"), (dict(beta=0.0), "beta=0.0"),
                                          (dict(h0=-1.0), "h0=-1.0"), (dict(s0=float("nan")), "s0=nan")])
def test_bad_gain(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptationGain(**{**dict(h0=0.1, s0=1.0, beta=0.5), **kwargs})


def test_fit_adaptation_gain_recovers_noiseless_curves():
    steps = [0, 1, 2, 4, 8, 16, 32, 64]
    for true in (AdaptationGain(0.2, 2.0, 0.5), AdaptationGain(0.05, 0.5, 0.8)):
        fit = fit_adaptation_gain(steps, [true.success(s) for s in steps], num_questions=200)
        np.testing.assert_allclose([fit.h0, fit.s0, fit.beta], [true.h0, true.s0, true.beta], rtol=1e-4)


def test_fit_adaptation_gain_flat_decreasing_and_zero_curves():
    from ttc_jax.scaling.allocate import FIT_BETA_BOUNDS, FIT_H0_BOUNDS
    flat = fit_adaptation_gain([0, 1, 2, 4], [0.3] * 4)  # adaptation does not help: constant hazard, no steps
    assert flat.beta == FIT_BETA_BOUNDS[0] and flat.success(0) == pytest.approx(0.3, abs=1e-3)
    assert allocate(100.0, sample_flops=10.0, step_flops=1.0, gain=flat).steps == 0
    down = fit_adaptation_gain([0, 1, 2, 4], [0.3, 0.25, 0.2, 0.1], num_questions=[10, 10, 10, 10])
    assert down.beta == FIT_BETA_BOUNDS[0] and down.success(0) == pytest.approx(0.2125, abs=2e-3)  # the mean
    zero = fit_adaptation_gain([0, 2, 8], [0.0, 0.0, 0.0])
    assert zero.h0 == pytest.approx(FIT_H0_BOUNDS[0]) and zero.beta == FIT_BETA_BOUNDS[0]


@pytest.mark.parametrize("args,match", [
    (([0, 1], [0.1, 0.2]), "2 points; expected at least 3"),
    (([0, 1, 2], [0.1, 0.2]), "steps has 3 values and success 2"),
    (([0, 2, 2], [0.1, 0.2, 0.3]), r"steps=\[0.0, 2.0, 2.0\]; expected finite values >= 0, strictly increasing"),
    (([-1, 2, 3], [0.1, 0.2, 0.3]), "steps="),
    (([0, 1, 2], [0.1, 1.0, 0.3]), r"success=\[0.1, 1.0, 0.3\]; expected values in \[0, 1\)"),
    (([0, 1, 2], [0.1, -0.1, 0.3]), "success="),
    (([0, 1, 2], [0.1, 0.2, 0.3], [1, 2]), "num_questions=\\[1, 2\\]"),
    (([0, 1, 2], [0.1, 0.2, 0.3], 0), "num_questions=0"),
    (([[0, 1, 2]], [0.1, 0.2, 0.3]), "steps has shape"),
])
def test_fit_adaptation_gain_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        fit_adaptation_gain(*args)
