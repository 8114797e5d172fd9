"""Spend a test-time FLOP budget where it buys the most accuracy.

Input: a `CurveSet` (measured accuracy per strategy, sample count n and difficulty bin, with a cost
per query `fixed + n * per_sample`), read from JSON with `curves_from_dict` in this shape (full
description in `ttc_jax.scaling.curves`)::

    {"format": "ttc-jax.accuracy-curves/1",
     "bins": {"easy": 0.3, "medium": 0.4, "hard": 0.3},                  # query share per bin
     "strategies": {"best_of_n_prm": {
         "cost": {"fixed": 2.1e9, "per_sample": 9.6e8},                  # FLOPs per query, or a model spec
         "curves": {"easy": {"n": [1, 2, 4, 8], "accuracy": [0.62, 0.70, 0.76, 0.79]}, ...}}},
     "larger_model": {"size_ratio": 4.0, "accuracy": {"easy": 0.84, ...}}}   # optional

The budget is the average FLOPs per query. For each bin the planner picks one (strategy, n) option so that the
expected accuracy sum_b share_b * acc_b is maximal subject to sum_b share_b * cost_b <= budget.

Methods
- "greedy" (default): marginal-gain allocation. Each bin's options are reduced to the upper concave
  hull of (cost, accuracy) over all strategies; every bin starts at its cheapest hull point and the
  upgrades (hull segments) are bought in order of accuracy gained per FLOP while they fit; a segment
  that does not fit blocks its bin, cheaper segments of other bins are still taken. This is optimal
  whenever the spent budget lands on a hull breakpoint and the curves are concave (then every
  option is on the hull). Otherwise, i.e. for a budget between breakpoints or for non-concave
  curves, it can fall short of the exact optimum by at most the gain of the first blocked segment;
  `Plan.upper_bound` reports the LP bound so the gap is visible.
- "mixed": the same order, but the first segment that does not fit is bought fractionally: that
  bin's queries are split between two sample counts. This is the optimum over randomised plans
  (the LP relaxation), exact for any curves, and spends the budget exactly.
- "exact": exhaustive search over all combinations (small problems only).

Also: the FLOPs-matched comparison with a larger model (Snell et al. 2024) and held-out
validation of fitted scaling curves (fit on the smaller half of budgets, test on the larger half).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from ttc_jax.scaling import _validate as V
from ttc_jax.scaling.curves import Curve, CurveSet
from ttc_jax.scaling.fits import fit_exp_power_law, fit_power_law

Method = Literal["greedy", "mixed", "exact"]
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Option:
    strategy: str
    n: int
    accuracy: float
    cost: float  # FLOPs per query


@dataclasses.dataclass(frozen=True)
class BinAllocation:
    """The option used for a bin; with `mix`, a fraction `mix_fraction` of its queries use `mix` instead."""

    bin: str
    share: float
    option: Option
    mix: Option | None = None
    mix_fraction: float = 0.0

    @property
    def accuracy(self) -> float:
        if self.mix is None:
            return self.option.accuracy
        return (1 - self.mix_fraction) * self.option.accuracy + self.mix_fraction * self.mix.accuracy

    @property
    def cost(self) -> float:
        if self.mix is None:
            return self.option.cost
        return (1 - self.mix_fraction) * self.option.cost + self.mix_fraction * self.mix.cost


@dataclasses.dataclass(frozen=True)
class Plan:
    budget: float  # average FLOPs per query allowed
    method: str
    allocations: tuple[BinAllocation, ...]
    upper_bound: float  # LP bound on the expected accuracy at this budget

    @property
    def accuracy(self) -> float:
        """Expected accuracy over the query mix."""
        return float(sum(a.share * a.accuracy for a in self.allocations))

    @property
    def cost(self) -> float:
        """Expected FLOPs per query."""
        return float(sum(a.share * a.cost for a in self.allocations))

    def to_dict(self) -> dict:
        def opt(o):
            return None if o is None else dataclasses.asdict(o)
        return {"budget": self.budget, "method": self.method, "accuracy": self.accuracy, "cost": self.cost,
                "upper_bound": self.upper_bound,
                "bins": [{"bin": a.bin, "share": a.share, **opt(a.option), "mix": opt(a.mix),
                          "mix_fraction": a.mix_fraction} for a in self.allocations]}


def bin_options(curves: CurveSet, bin_name: str) -> list[Option]:
    """Every measured (strategy, n) of one bin with its cost."""
    return [Option(s.name, n, acc, float(s.cost(n)))
            for s in curves.strategies.values()
            for n, acc in zip(s.curves[bin_name].n, s.curves[bin_name].accuracy)]


def upper_hull(options: Sequence[Option]) -> list[Option]:
    """Upper concave hull of (cost, accuracy), from the cheapest option (best accuracy at that cost) upward;
    only points where accuracy strictly increases are kept."""
    pts = sorted(options, key=lambda o: (o.cost, -o.accuracy))
    front: list[Option] = []
    for o in pts:  # Pareto front: strictly better accuracy for more cost
        if not front or o.accuracy > front[-1].accuracy + _EPS:
            if front and o.cost <= front[-1].cost:
                continue
            front.append(o)
    hull: list[Option] = []
    for o in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or below the segment a -> o
            if (b.accuracy - a.accuracy) * (o.cost - a.cost) <= (o.accuracy - a.accuracy) * (b.cost - a.cost):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def _check_budget(curves: CurveSet, budget: float) -> tuple[float, dict[str, list[Option]]]:
    if not isinstance(curves, CurveSet):
        raise ValueError(f"curves has type {type(curves).__name__}; expected a CurveSet "
                         "(parse a dict or JSON with ttc_jax.scaling.curves.curves_from_dict)")
    budget = V.positive_number("budget", budget)
    hulls = {b: upper_hull(bin_options(curves, b)) for b in curves.bins}
    floor = sum(curves.bins[b] * h[0].cost for b, h in hulls.items())
    if budget < floor * (1 - 1e-12):
        raise ValueError(f"budget={budget:.6g} FLOPs per query is below the cheapest plan ({floor:.6g}); "
                         f"expected budget >= {floor:.6g}")
    return budget, hulls


def _greedy(curves: CurveSet, budget: float, hulls: dict[str, list[Option]], mixed: bool) -> Plan:
    shares = curves.bins
    idx = {b: 0 for b in hulls}
    spent = sum(shares[b] * h[0].cost for b, h in hulls.items())
    heap: list[tuple[float, int, str]] = []

    def push(b):
        j = idx[b]
        h = hulls[b]
        if j + 1 < len(h):
            slope = (h[j + 1].accuracy - h[j].accuracy) / (h[j + 1].cost - h[j].cost)
            heapq.heappush(heap, (-slope, order[b], b))

    order = {b: i for i, b in enumerate(hulls)}
    for b in hulls:
        push(b)
    mix: dict[str, tuple[Option, float]] = {}
    limit = budget * (1 + 1e-12)
    while heap:
        _, _, b = heapq.heappop(heap)
        h, j = hulls[b], idx[b]
        dc = shares[b] * (h[j + 1].cost - h[j].cost)
        if spent + dc <= limit:
            spent += dc
            idx[b] = j + 1
            push(b)
        elif mixed:
            frac = max(0.0, (budget - spent) / dc)
            if frac > 0:
                mix[b] = (h[j + 1], frac)
            break
        # greedy: bin b stays where it is; keep buying cheaper upgrades elsewhere
    allocs = tuple(BinAllocation(b, shares[b], hulls[b][idx[b]], *(mix.get(b, (None, 0.0)))) for b in hulls)
    return Plan(budget=budget, method="mixed" if mixed else "greedy", allocations=allocs, upper_bound=math.nan)


def _exact(curves: CurveSet, budget: float, max_combinations: int) -> Plan:
    bins = list(curves.bins)
    opts = [bin_options(curves, b) for b in bins]
    total = math.prod(len(o) for o in opts)
    if total > max_combinations:
        raise ValueError(f"method='exact' needs {total} combinations > max_combinations={max_combinations}; "
                         "expected a smaller problem (use 'greedy' or 'mixed')")
    shares = np.array([curves.bins[b] for b in bins])
    cost = np.array(list(itertools.product(*[[o.cost for o in ol] for ol in opts]))) @ shares
    acc = np.array(list(itertools.product(*[[o.accuracy for o in ol] for ol in opts]))) @ shares
    feasible = cost <= budget * (1 + 1e-12)
    score = np.where(feasible, acc, -np.inf)
    best = score.max()
    i = int(np.flatnonzero(score >= best - 1e-15)[np.argmin(cost[score >= best - 1e-15])])  # cheapest optimum
    choice = np.unravel_index(i, [len(o) for o in opts])
    allocs = tuple(BinAllocation(b, curves.bins[b], opts[k][choice[k]]) for k, b in enumerate(bins))
    return Plan(budget=budget, method="exact", allocations=allocs, upper_bound=math.nan)


def plan_budget(curves: CurveSet, budget: float, *, method: Method = "greedy",
                max_combinations: int = 2_000_000) -> Plan:
    """Choose strategy and n per bin maximising expected accuracy at `budget` average FLOPs per query."""
    budget, hulls = _check_budget(curves, budget)
    bound = _greedy(curves, budget, hulls, mixed=True).accuracy
    if method == "greedy":
        plan = _greedy(curves, budget, hulls, mixed=False)
    elif method == "mixed":
        plan = _greedy(curves, budget, hulls, mixed=True)
    elif method == "exact":
        plan = _exact(curves, budget, max_combinations)
    else:
        raise ValueError(f"method={method!r}; expected 'greedy', 'mixed' or 'exact'")
    return dataclasses.replace(plan, upper_bound=bound)


def budget_range(curves: CurveSet) -> tuple[float, float]:
    """(cheapest plan, cost beyond which no bin can improve) in FLOPs per query."""
    hulls = {b: upper_hull(bin_options(curves, b)) for b in curves.bins}
    return (sum(curves.bins[b] * h[0].cost for b, h in hulls.items()),
            sum(curves.bins[b] * h[-1].cost for b, h in hulls.items()))


def plan_frontier(curves: CurveSet, budgets: Sequence[float] | None = None, *, method: Method = "greedy",
                  n_budgets: int = 24) -> list[Plan]:
    """Plans for several budgets (default: a geometric grid over `budget_range`)."""
    if budgets is None:
        lo, hi = budget_range(curves)
        budgets = np.geomspace(lo, max(hi, lo * (1 + 1e-9)), n_budgets)
    return [plan_budget(curves, float(b), method=method) for b in budgets]


def uniform_strategy_curve(curves: CurveSet, strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, cost per query, expected accuracy) when every bin uses `strategy` with the same n."""
    if strategy not in curves.strategies:
        raise ValueError(f"strategy={strategy!r}; expected one of {sorted(curves.strategies)}")
    s = curves.strategies[strategy]
    common = sorted(set.intersection(*(set(c.n) for c in s.curves.values())))
    acc = [sum(curves.bins[b] * dict(zip(c.n, c.accuracy))[n] for b, c in s.curves.items()) for n in common]
    return np.array(common), np.array([s.cost(n) for n in common], dtype=float), np.array(acc)


# --- FLOPs-matched comparison with a larger model (Snell et al. 2024) -------------------------------------

def flops_matched_multiplier(size_ratio: float, inference_to_pretraining: float) -> float:
    """Test-time compute multiplier that matches a model `size_ratio` (M) times larger in total FLOPs.

    With R = D_inference / D_pretrain (tokens), pretraining 6 N D_pretrain and inference 2 N D_inference:
    X = M + 3 (M - 1) / R.
    """
    M = V.positive_number("size_ratio", size_ratio)
    if M < 1:
        raise ValueError(f"size_ratio={size_ratio!r}; expected >= 1 (the larger model's size over this one's)")
    R = V.positive_number("inference_to_pretraining", inference_to_pretraining)
    return M + 3.0 * (M - 1.0) / R


@dataclasses.dataclass(frozen=True)
class MatchedComparison:
    size_ratio: float
    inference_to_pretraining: float
    multiplier: float
    base_cost: float  # FLOPs per query of the small model's cheapest single-sample option
    budget: float  # multiplier * base_cost
    per_bin: tuple[dict, ...]  # each bin given the whole budget: best option vs the larger model
    pooled: Plan  # the budget allocated across bins by the planner
    large_accuracy: float  # the larger model's expected accuracy over the bins

    def to_dict(self) -> dict:
        return {"size_ratio": self.size_ratio, "inference_to_pretraining": self.inference_to_pretraining,
                "multiplier": self.multiplier, "base_cost": self.base_cost, "budget": self.budget,
                "per_bin": list(self.per_bin), "pooled": self.pooled.to_dict(),
                "small_accuracy": self.pooled.accuracy, "large_accuracy": self.large_accuracy}


def compare_with_larger_model(curves: CurveSet, inference_to_pretraining: float, *,
                              size_ratio: float | None = None, large_accuracy: Mapping[str, float] | None = None,
                              base_cost: float | None = None) -> MatchedComparison:
    """Small model + test-time compute vs. a larger model at equal total (pretraining + inference) FLOPs.

    size_ratio / large_accuracy default to `curves.larger_model`; base_cost to the cheapest n = 1 option.
    """
    lm = curves.larger_model
    if size_ratio is None or large_accuracy is None:
        if lm is None:
            raise ValueError("compare_with_larger_model needs size_ratio and large_accuracy, or curves.larger_model")
        size_ratio = lm.size_ratio if size_ratio is None else size_ratio
        large_accuracy = lm.accuracy if large_accuracy is None else large_accuracy
    if set(large_accuracy) != set(curves.bins):
        raise ValueError(f"large_accuracy has bins {sorted(large_accuracy)}; expected {sorted(curves.bins)}")
    X = flops_matched_multiplier(size_ratio, inference_to_pretraining)
    if base_cost is None:
        base_cost = min(float(s.cost(1)) for s in curves.strategies.values())
    base_cost = V.positive_number("base_cost", base_cost)
    budget = X * base_cost
    rows = []
    for b in curves.bins:
        fits = [o for o in bin_options(curves, b) if o.cost <= budget * (1 + 1e-12)]
        best = max(fits, key=lambda o: (o.accuracy, -o.cost)) if fits else None
        small = best.accuracy if best else math.nan
        rows.append({"bin": b, "small_accuracy": small, "small_option": dataclasses.asdict(best) if best else None,
                     "large_accuracy": float(large_accuracy[b]),
                     "winner": "test_time" if small > large_accuracy[b] else "larger_model"})
    pooled = plan_budget(curves, max(budget, budget_range(curves)[0]))
    large = float(sum(curves.bins[b] * large_accuracy[b] for b in curves.bins))
    return MatchedComparison(float(size_ratio), float(inference_to_pretraining), X, base_cost, budget,
                             tuple(rows), pooled, large)


# --- held-out validation ----------------------------------------------------------------------------------

CurveForm = Literal["exp_power", "power_offset", "power"]
_MIN_FIT = {"exp_power": 2, "power": 2, "power_offset": 3}


def fit_accuracy_curve(n, accuracy, form: CurveForm = "exp_power") -> Callable[[np.ndarray], np.ndarray]:
    """A fitted accuracy(n): "exp_power": log acc = a n^b (coverage law, saturates at 1);
    "power": 1 - acc = a n^b; "power_offset": 1 - acc = c + a n^b (saturates at 1 - c).
    Accuracies are clipped to [1e-6, 1 - 1e-6] before taking logs."""
    if form not in _MIN_FIT:
        raise ValueError(f"form={form!r}; expected one of {sorted(_MIN_FIT)}")
    acc = np.clip(np.asarray(accuracy, dtype=float), 1e-6, 1 - 1e-6)
    if form == "exp_power":
        f = fit_exp_power_law(n, acc)
        return lambda m: f.predict(m)
    f = fit_power_law(n, 1 - acc, offset=form == "power_offset")
    return lambda m: np.clip(1 - f.predict(m), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class HoldoutReport:
    """Fit each curve on its smaller-n half, predict the larger half; then plan on the fitted curves
    at the larger-half budgets and compare predicted with realised (measured) accuracy."""

    form: str
    curves: tuple[dict, ...]  # strategy, bin, n_fit, n_test, predicted, measured, abs_errors
    mean_abs_error: float
    max_abs_error: float
    plans: tuple[dict, ...]  # budget, predicted, realised, optimal (planning on measured curves)

    @property
    def plan_mean_abs_error(self) -> float:
        return float(np.mean([abs(p["predicted"] - p["realised"]) for p in self.plans])) if self.plans else math.nan

    @property
    def plan_mean_regret(self) -> float:
        return float(np.mean([p["optimal"] - p["realised"] for p in self.plans])) if self.plans else math.nan

    def to_dict(self) -> dict:
        return {"form": self.form, "mean_abs_error": self.mean_abs_error, "max_abs_error": self.max_abs_error,
                "plan_mean_abs_error": self.plan_mean_abs_error, "plan_mean_regret": self.plan_mean_regret,
                "curves": list(self.curves), "plans": list(self.plans)}


def holdout_validation(curves: CurveSet, *, form: CurveForm = "exp_power", n_budgets: int = 8) -> HoldoutReport:
    """Held-out budgets: fit on the smaller half of each curve's n (budgets), report errors on the larger half."""
    if form not in _MIN_FIT:
        raise ValueError(f"form={form!r}; expected one of {sorted(_MIN_FIT)}")
    rows, fitted = [], {}
    for s in curves.strategies.values():
        for b, c in s.curves.items():
            k = (len(c.n) + 1) // 2
            if k < _MIN_FIT[form] or len(c.n) - k < 1:
                raise ValueError(f"curve strategies[{s.name!r}].curves[{b!r}] has {len(c.n)} points; expected at "
                                 f"least {2 * _MIN_FIT[form] - 1} for a held-out fit of form {form!r}")
            f = fit_accuracy_curve(c.n[:k], c.accuracy[:k], form)
            fitted[(s.name, b)] = f
            pred = f(np.array(c.n[k:], dtype=float))
            err = np.abs(pred - np.array(c.accuracy[k:]))
            rows.append({"strategy": s.name, "bin": b, "n_fit": list(c.n[:k]), "n_test": list(c.n[k:]),
                         "predicted": pred.tolist(), "measured": list(c.accuracy[k:]), "abs_errors": err.tolist()})
    errs = np.concatenate([r["abs_errors"] for r in rows])
    predicted_set = curves.replace_curves(
        lambda s, b, c: Curve(c.n, tuple(float(v) for v in fitted[(s, b)](np.array(c.n, dtype=float))),
                              c.num_questions))
    # budgets of the larger half: from the cost where every bin is at its median n, to the full range
    lo = sum(curves.bins[b] * min(s.cost(s.curves[b].n[(len(s.curves[b].n) + 1) // 2 - 1])
                                  for s in curves.strategies.values()) for b in curves.bins)
    hi = budget_range(curves)[1]
    plans = []
    if hi > lo:
        measured = {(s.name, b): dict(zip(c.n, c.accuracy)) for s in curves.strategies.values()
                    for b, c in s.curves.items()}
        for budget in np.geomspace(lo, hi, n_budgets):
            p = plan_budget(predicted_set, float(budget))
            realised = sum(a.share * measured[(a.option.strategy, a.bin)][a.option.n] for a in p.allocations)
            plans.append({"budget": float(budget), "predicted": p.accuracy, "realised": float(realised),
                          "optimal": plan_budget(curves, float(budget)).accuracy})
    return HoldoutReport(form=form, curves=tuple(rows), mean_abs_error=float(errs.mean()),
                         max_abs_error=float(errs.max()), plans=tuple(plans))
