r"""How many adapted samples, and how many adaptation steps each, for a FLOP budget (the "all three" recipe:
adapt a copy per sample, generate, select).

Model. Each of N candidates comes from a copy adapted with s steps and costs c(s) = c0 + c1 s FLOPs
(c0: the copy's prompt prefill, decoding and PRM scoring -- the prefill is not shared, the weights differ;
c1: one adaptation step on the prefix). A candidate is correct with probability p(s) = 1 - exp(-h(s)),
with the hazard saturating in s:  h(s) = h0 (1 + s/s0)^beta, 0 < beta < 1 (diminishing returns).
A selector that finds a correct candidate when there is one (pass@N; an upper bound for a PRM) succeeds
with probability 1 - (1 - p)^N = 1 - exp(-N h(s)).  So: maximise N h(s) subject to N c(s) <= B.

The seed text's closed form is wrong. It maximises N (B/N)^b = B^b N^(1-b), which has no stationary
point in N: it increases with N for b < 1 (as many samples as possible) and decreases for b > 1 (N = 1);
N ~ B^(b/(1+b)) solves no first-order condition of it.

Solution (continuous). At the optimum the budget binds, N = B / c(s), and the objective is
B h(s)/c(s): maximise the hazard per FLOP r(s) = h(s)/c(s), which does not depend on B.
    d ln r / ds = beta/(s0 + s) - c1/(c0 + c1 s) = 0   =>   s* = (beta c0/c1 - s0) / (1 - beta),
clipped to [0, max_steps] (r is unimodal in s for beta < 1). Adaptation pays (s* > 0) iff
beta c0 > c1 s0: the first step's relative hazard gain beta/s0 beats its relative cost c1/c0. The budget
per sample is then c* = c(s*) = (c0 - c1 s0)/(1 - beta) when interior, and N* = B / c*: N grows linearly
in B (every extra FLOP buys more samples at the same per-sample budget), not as B^(b/(1+b)).

Integers. For a given N the best s is the largest affordable, s_N = min(max_steps, floor((B/N - c0)/c1)),
so the exact integer optimum maximises F(N) = N h(s_N) over 1 <= N <= floor(B/c0). The continuous bound
G(N) >= F(N) (s_N without the floor) is unimodal in N with its peak at B / c(min(s*, max_steps)); `allocate`
walks outward from that peak and stops on each side when G falls to the best F found, which is exact.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Iterator

from ttc_jax.scaling.flops import forward_flops, generation_flops, prm_flops, training_flops


def _positive(name: str, value, *, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0 \
            or (upper is not None and value >= upper):
        want = "a finite number > 0" + ("" if upper is None else f" and < {upper}")
        raise ValueError(f"{name}={value!r}; expected {want}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class AdaptationGain:
    """Per-candidate hazard h(s) = h0 (1 + s/s0)^beta after s adaptation steps; success 1 - exp(-h)."""

    h0: float
    s0: float
    beta: float

    def __post_init__(self):
        _positive("AdaptationGain.h0", self.h0)
        _positive("AdaptationGain.s0", self.s0)
        _positive("AdaptationGain.beta", self.beta, upper=1.0)

    @classmethod
    def from_success(cls, p0: float, s0: float, beta: float) -> "AdaptationGain":
        """From the un-adapted per-sample success probability p0 in (0, 1)."""
        _positive("p0", p0, upper=1.0)
        return cls(-math.log1p(-p0), s0, beta)

    def hazard(self, steps: float) -> float:
        return self.h0 * (1.0 + steps / self.s0) ** self.beta

    def success(self, steps: float) -> float:
        return -math.expm1(-self.hazard(steps))


@dataclasses.dataclass(frozen=True)
class Allocation:
    """N samples, each from a copy adapted `steps` steps; unpacks as (budget_per_sample, n)."""

    n: int
    steps: int
    budget_per_sample: float  # c0 + c1 * steps FLOPs
    total_flops: float  # n * budget_per_sample + fixed
    success: float  # predicted 1 - exp(-n h(steps))

    def __iter__(self) -> Iterator:
        return iter((self.budget_per_sample, self.n))


def optimal_steps(sample_flops: float, step_flops: float, gain: AdaptationGain) -> float:
    """The continuous optimum s* = max(0, (beta c0/c1 - s0) / (1 - beta)) (not capped)."""
    c0, c1 = _positive("sample_flops", sample_flops), _positive("step_flops", step_flops)
    return max(0.0, (gain.beta * c0 / c1 - gain.s0) / (1.0 - gain.beta))


def _objective(n: int, steps: float, gain: AdaptationGain) -> float:
    return n * gain.hazard(steps)


def allocate(total_budget: float, *, sample_flops: float, step_flops: float, gain: AdaptationGain,
             max_steps: int | None = None, fixed_flops: float = 0.0) -> Allocation:
    """The integer (N, steps) maximising the predicted success 1 - exp(-N h(steps)) subject to
    N (sample_flops + steps * step_flops) + fixed_flops <= total_budget (see the module docstring)."""
    B = _positive("total_budget", total_budget)
    c0, c1 = _positive("sample_flops", sample_flops), _positive("step_flops", step_flops)
    if not isinstance(gain, AdaptationGain):
        raise ValueError(f"gain={gain!r}; expected an AdaptationGain")
    if isinstance(fixed_flops, bool) or not isinstance(fixed_flops, numbers.Real) or not 0 <= fixed_flops < math.inf:
        raise ValueError(f"fixed_flops={fixed_flops!r}; expected a finite number >= 0")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral)
                                  or max_steps < 0):
        raise ValueError(f"max_steps={max_steps!r}; expected None or an int >= 0")
    room = B - fixed_flops
    if room < c0:
        raise ValueError(f"total_budget={total_budget!r} is below the cost of one sample "
                         f"({c0 + fixed_flops:.4g} FLOPs with fixed_flops={fixed_flops!r}); expected at least that")
    cap = math.inf if max_steps is None else int(max_steps)
    n_max = int(room // c0)

    def steps_for(n: int) -> int:
        return int(min(cap, math.floor((room / n - c0) / c1 + 1e-12)))

    def bound(n: int) -> float:
        return _objective(n, min(cap, (room / n - c0) / c1), gain)

    peak = room / (c0 + c1 * min(optimal_steps(c0, c1, gain), cap))
    lo = min(max(int(math.floor(peak)), 1), n_max)
    best_n, best = lo, _objective(lo, steps_for(lo), gain)
    for start, step in ((lo, -1), (lo + 1, 1)):
        n = start
        while 1 <= n <= n_max and bound(n) > best * (1 - 1e-12):
            f = _objective(n, steps_for(n), gain)
            if f > best or (f == best and n > best_n):
                best_n, best = n, f
            n += step
    s = steps_for(best_n)
    per = c0 + c1 * s
    return Allocation(n=best_n, steps=s, budget_per_sample=per, total_flops=best_n * per + fixed_flops,
                      success=-math.expm1(-best))


def allocate_shared(total_budget: float, *, sample_flops: float, step_flops: float, gain: AdaptationGain,
                    max_steps: int, fixed_flops: float = 0.0) -> Allocation:
    """One adapted copy shared by all N samples (every copy would adapt on the same text): cost
    fixed_flops + steps * step_flops + N * sample_flops. Maximises N h(steps) (success 1 - exp(-N h)) over
    steps in [0, max_steps], N the most the rest of the budget buys; exact (steps enumerated).
    `budget_per_sample` of the result is sample_flops (the adaptation is paid once, in total_flops)."""
    B = _positive("total_budget", total_budget)
    c0, c1 = _positive("sample_flops", sample_flops), _positive("step_flops", step_flops)
    if not isinstance(gain, AdaptationGain):
        raise ValueError(f"gain={gain!r}; expected an AdaptationGain")
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 0:
        raise ValueError(f"max_steps={max_steps!r}; expected an int >= 0")
    if isinstance(fixed_flops, bool) or not isinstance(fixed_flops, numbers.Real) or not 0 <= fixed_flops < math.inf:
        raise ValueError(f"fixed_flops={fixed_flops!r}; expected a finite number >= 0")
    if B - fixed_flops < c0:
        raise ValueError(f"total_budget={total_budget!r} is below the cost of one sample "
                         f"({c0 + fixed_flops:.4g} FLOPs with fixed_flops={fixed_flops!r}); expected at least that")
    best = None
    for steps in range(int(max_steps) + 1):
        n = int(math.floor((B - fixed_flops - steps * c1) / c0 + 1e-12))
        if n < 1:
            break
        f = _objective(n, steps, gain)
        if best is None or f > best[0]:
            best = (f, n, steps)
    f, n, steps = best
    return Allocation(n=n, steps=steps, budget_per_sample=c0, total_flops=fixed_flops + steps * c1 + n * c0,
                      success=-math.expm1(-f))


def adaptation_step_flops(cfg: Any, prefix_len: int, n_sequences: int = 1) -> float:
    """FLOPs of one full-parameter adaptation step on a prefix (forward + backward on prefix_len - 1 inputs)."""
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, numbers.Integral) or prefix_len < 2:
        raise ValueError(f"prefix_len={prefix_len!r}; expected an int >= 2")
    return training_flops(cfg, int(prefix_len) - 1, n_sequences).total


def ttt_adapt_flops(cfg: Any, prefix_len: int, steps: int, n_sequences: int = 1) -> float:
    """FLOPs of one `ttc_jax.adapt.ttt_adapt(scope="all")` call with prefix_len tokens per step (window + 1
    with a window): `steps` adaptation steps plus the final check's forward. LoRA merges and the guard's
    elementwise work are not counted; scopes that skip weight gradients cost somewhat less."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps={steps!r}; expected an int >= 0")
    step = adaptation_step_flops(cfg, prefix_len, n_sequences)  # validates prefix_len
    check = forward_flops(cfg, int(prefix_len) - 1, keep_state=False).total * n_sequences
    return int(steps) * step + check


def sample_flops(cfg: Any, prompt_len: int, sample_len: int, *, prm_cfg: Any = None) -> float:
    """FLOPs of one candidate from its own adapted copy: prompt prefill (not shared), decoding, PRM scoring."""
    cost = generation_flops(cfg, prompt_len, 1, sample_len).total
    if prm_cfg is not None:
        cost += prm_flops(prm_cfg, prompt_len, 1, sample_len).total
    return float(cost)


# bounds of the fit; beta stays inside AdaptationGain's open interval (0, 1)
FIT_BETA_BOUNDS = (1e-4, 1.0 - 1e-4)
FIT_H0_BOUNDS = (1e-9, 1e3)


def fit_adaptation_gain(steps, success, num_questions=None) -> AdaptationGain:
    """Maximum-likelihood AdaptationGain from measured per-sample success at several step counts.

    steps: >= 3 strictly increasing step counts >= 0; success: the per-sample success rate at each, in
    [0, 1); num_questions: the number of samples behind each rate (an int or one per point; None: equal
    weights). Maximises the binomial log-likelihood sum n_i [p_i log(1 - exp(-h(s_i))) - (1 - p_i) h(s_i)]
    over (h0, s0, beta) with beta in FIT_BETA_BOUNDS and h0 in FIT_H0_BOUNDS (multi-start L-BFGS-B in
    (log h0, log s0, beta)). Noiseless data of the family are recovered. The family is non-decreasing in
    s: a flat or decreasing curve (adaptation does not help, or hurts) gives beta at its lower bound
    1e-4 (a constant hazard at about the curve's weighted mean, for which `allocate` picks no
    adaptation); a curve rising faster than any beta < 1 allows gives beta at the upper bound. All-zero
    success gives h0 at its lower bound 1e-9.
    """
    import numpy as np
    from scipy.optimize import minimize

    def _vector(name, value):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r}; expected a sequence of numbers") from None
        if arr.ndim != 1:
            raise ValueError(f"{name} has shape {arr.shape}; expected a 1-D sequence")
        return arr

    s, p = _vector("steps", steps), _vector("success", success)
    if len(s) != len(p):
        raise ValueError(f"steps has {len(s)} values and success {len(p)}; expected equal lengths")
    if len(s) < 3:
        raise ValueError(f"{len(s)} points; expected at least 3 (step count, success) pairs for 3 parameters")
    if not np.isfinite(s).all() or (s < 0).any() or (np.diff(s) <= 0).any():
        raise ValueError(f"steps={s.tolist()}; expected finite values >= 0, strictly increasing")
    if not np.isfinite(p).all() or (p < 0).any() or (p >= 1).any():
        raise ValueError(f"success={p.tolist()}; expected values in [0, 1) (success 1 is an infinite hazard)")
    if num_questions is None:
        n = np.ones_like(p)
    else:
        n = np.broadcast_to(_vector("num_questions", np.atleast_1d(num_questions)), p.shape) \
            if np.ndim(num_questions) <= 1 and np.size(num_questions) in (1, len(p)) else None
        if n is None or not np.isfinite(n).all() or (n <= 0).any():
            raise ValueError(f"num_questions={num_questions!r}; expected None, a number > 0 or {len(p)} of them")
    n = n / n.sum()
    s_hi = max(float(s.max()), 1.0)
    lo = [math.log(FIT_H0_BOUNDS[0]), math.log(s_hi * 1e-4), FIT_BETA_BOUNDS[0]]
    hi = [math.log(FIT_H0_BOUNDS[1]), math.log(s_hi * 1e4), FIT_BETA_BOUNDS[1]]

    def nll(theta):  # and its gradient
        log_h0, log_s0, beta = theta
        u = s / math.exp(log_s0)
        log1p_u = np.log1p(u)
        h = np.exp(log_h0 + beta * log1p_u)
        log_q = np.log(np.maximum(-np.expm1(-h), 1e-300))
        dh = n * (1.0 - p - p / np.maximum(np.expm1(np.minimum(h, 700.0)), 1e-300)) * h  # d nll / d log h
        grad = [dh.sum(), -(dh * beta * u / (1.0 + u)).sum(), (dh * log1p_u).sum()]
        return float(np.sum(n * (-p * log_q + (1.0 - p) * h))), np.asarray(grad)

    p_first = max(float(p[0]), 1e-6)
    best = None
    for s0 in (s_hi / 100, s_hi / 10, s_hi):
        for beta in (0.5,):
            x0 = [math.log(max(-math.log1p(-p_first), 1e-6)), math.log(s0), beta]
            r = minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                         options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000})
            if best is None or r.fun < best.fun:
                best = r
    log_h0, log_s0, beta = best.x
    return AdaptationGain(float(math.exp(log_h0)), float(math.exp(log_s0)),
                          float(min(max(beta, FIT_BETA_BOUNDS[0]), FIT_BETA_BOUNDS[1])))
