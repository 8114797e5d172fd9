"""The budget planner against brute force and linear programming; curve JSON; Snell et al.'s matched comparison."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.optimize import linprog

from ttc_jax.scaling.curves import Curve, CurveSet, Strategy, curves_from_dict, curves_to_dict, synthetic_curves
from ttc_jax.scaling.flops import AffineCost, best_of_n_cost
from ttc_jax.scaling.planner import (bin_options, budget_range, compare_with_larger_model, flops_matched_multiplier,
                                     holdout_validation, plan_budget, plan_frontier, upper_hull)


def brute_force(cs: CurveSet, budget: float) -> float:
    """Best expected accuracy over every combination of one (strategy, n) per bin."""
    bins = list(cs.bins)
    per_bin = [[(s.cost(n), acc) for s in cs.strategies.values() for n, acc in zip(s.curves[b].n, s.curves[b].accuracy)]
               for b in bins]
    best = -math.inf
    for combo in itertools.product(*per_bin):
        cost = sum(cs.bins[b] * c for b, (c, _) in zip(bins, combo))
        if cost <= budget * (1 + 1e-12):
            best = max(best, sum(cs.bins[b] * a for b, (_, a) in zip(bins, combo)))
    return best


def lp_optimum(cs: CurveSet, budget: float) -> float:
    """Optimum over randomised plans: a linear programme over per-bin option fractions."""
    opts = [(b, o) for b in cs.bins for o in bin_options(cs, b)]
    c = -np.array([cs.bins[b] * o.accuracy for b, o in opts])
    a_ub = np.array([[cs.bins[b] * o.cost for b, o in opts]])
    a_eq = np.array([[1.0 if b == bb else 0.0 for b, _ in opts] for bb in cs.bins])
    res = linprog(c, A_ub=a_ub, b_ub=[budget], A_eq=a_eq, b_eq=np.ones(len(cs.bins)), bounds=(0, None))
    assert res.status == 0
    return -res.fun


def concave_curves(rng, n_bins=3, ns=(1, 2, 4, 8, 16, 32)) -> CurveSet:
    strategies = {}
    for name, fixed, per in (("s1", 1.0, 1.0), ("s2", 0.5, 1.7)):
        curves = {}
        for b in range(n_bins):
            p, cap = rng.uniform(0.02, 0.6), rng.uniform(0.5, 1.0)
            curves[f"b{b}"] = Curve(ns, tuple(cap * (1 - (1 - p) ** n) for n in ns))
        strategies[name] = Strategy(name, AffineCost(fixed, per), curves)
    return CurveSet({f"b{b}": rng.uniform(0.5, 2) for b in range(n_bins)}, strategies)


def random_curves(rng, n_bins=3, n_points=5) -> CurveSet:
    """Arbitrary (non-concave, non-monotone) accuracies."""
    strategies = {}
    for name, fixed, per in (("s1", 0.0, 1.0), ("s2", 2.0, 0.6)):
        curves = {f"b{b}": Curve(tuple(range(1, n_points + 1)), tuple(rng.uniform(0, 1, n_points)))
                  for b in range(n_bins)}
        strategies[name] = Strategy(name, AffineCost(fixed, per), curves)
    return CurveSet({f"b{b}": 1.0 for b in range(n_bins)}, strategies)


def test_known_optimum_by_hand():
    cs = CurveSet({"A": 1, "B": 1}, {"s": Strategy("s", AffineCost(0.0, 1.0), {
        "A": Curve((1, 2, 3, 4), (0.5, 0.7, 0.8, 0.85)),
        "B": Curve((1, 2, 3, 4), (0.2, 0.35, 0.45, 0.5))})})
    # marginal gains per unit cost (share 1/2 each): A 0.2, 0.1, 0.05; B 0.15, 0.1, 0.05
    expected = {1.0: (1, 1), 1.5: (2, 1), 2.0: (2, 2), 3.0: (3, 3), 4.0: (4, 4)}
    for budget, (na, nb) in expected.items():
        p = plan_budget(cs, budget)
        assert {a.bin: a.option.n for a in p.allocations} == {"A": na, "B": nb}
        assert p.accuracy == pytest.approx(brute_force(cs, budget))


def test_greedy_keeps_buying_cheaper_upgrades_after_one_does_not_fit():
    cs = CurveSet({"A": 1, "B": 1}, {"s": Strategy("s", AffineCost(0.0, 1.0), {
        "A": Curve((1, 10), (0.1, 0.9)),  # steep but expensive upgrade
        "B": Curve((1, 2), (0.1, 0.15))})})  # shallow, cheap upgrade
    p = plan_budget(cs, 2.0)
    assert {a.bin: a.option.n for a in p.allocations} == {"A": 1, "B": 2}
    assert p.accuracy == pytest.approx(brute_force(cs, 2.0)) and p.upper_bound > p.accuracy
    m = plan_budget(cs, 2.0, method="mixed")  # LP: a fraction of bin A's queries get n = 10
    assert {a.bin: (a.option.n, a.mix and a.mix.n) for a in m.allocations} == {"A": (1, 10), "B": (1, None)}
    assert m.allocations[0].mix_fraction == pytest.approx(1.0 / 4.5)  # the budget left over the upgrade cost


@pytest.mark.parametrize("seed", range(4))
def test_greedy_against_brute_force_on_concave_curves(seed):
    cs = concave_curves(np.random.default_rng(seed))
    lo, hi = budget_range(cs)
    max_gain = max(max(h[j + 1].accuracy - h[j].accuracy for j in range(len(h) - 1)) * cs.bins[b]
                   for b in cs.bins for h in [upper_hull(bin_options(cs, b))] if len(h) > 1)
    n_exact = 0
    for budget in np.geomspace(lo, hi * 1.2, 40):
        p = plan_budget(cs, budget)
        best = brute_force(cs, budget)
        assert p.cost <= budget * (1 + 1e-12)
        assert best <= p.upper_bound + 1e-12  # the LP bound holds
        assert best - max_gain - 1e-12 <= p.accuracy <= best + 1e-12
        if p.accuracy >= p.upper_bound - 1e-12:  # greedy reached the bound: provably optimal
            assert p.accuracy == pytest.approx(best, abs=1e-12)
            n_exact += 1
    assert n_exact >= 2
    # at breakpoint budgets (the cost the mixed plan reaches without splitting) greedy is exact
    for budget in np.geomspace(lo, hi, 12):
        m = plan_budget(cs, budget, method="mixed")
        bp = sum(a.share * a.option.cost for a in m.allocations)
        assert plan_budget(cs, bp).accuracy == pytest.approx(brute_force(cs, bp), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_mixed_is_the_lp_optimum_for_any_curves(seed):
    rng = np.random.default_rng(10 + seed)
    for cs in (concave_curves(rng), random_curves(rng)):
        lo, hi = budget_range(cs)
        for budget in np.geomspace(lo, hi, 9)[1:-1]:
            m = plan_budget(cs, budget, method="mixed")
            assert m.accuracy == pytest.approx(lp_optimum(cs, budget), abs=1e-9)
            assert m.cost == pytest.approx(budget, rel=1e-9)  # spends the budget exactly
            assert m.upper_bound == pytest.approx(m.accuracy, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_exact_method_equals_brute_force_on_non_concave_curves(seed):
    cs = random_curves(np.random.default_rng(20 + seed))
    lo, hi = budget_range(cs)
    for budget in np.geomspace(lo, hi * 1.5, 10):
        e = plan_budget(cs, budget, method="exact")
        assert e.accuracy == pytest.approx(brute_force(cs, budget), abs=1e-12)
        assert e.cost <= budget * (1 + 1e-12)
        assert plan_budget(cs, budget).accuracy <= e.accuracy + 1e-12


def test_upper_hull_keeps_only_concave_improving_points():
    from ttc_jax.scaling.planner import Option
    pts = [Option("s", n, a, c) for n, (c, a) in enumerate([(1, 0.2), (2, 0.25), (3, 0.5), (4, 0.45), (5, 0.6)])]
    assert [(o.cost, o.accuracy) for o in upper_hull(pts)] == [(1, 0.2), (3, 0.5), (5, 0.6)]


def test_budget_errors_and_frontier():
    cs = synthetic_curves()
    lo, _ = budget_range(cs)
    with pytest.raises(ValueError, match=r"budget=.*below the cheapest plan"):
        plan_budget(cs, lo * 0.5)
    with pytest.raises(ValueError, match="budget"):
        plan_budget(cs, -1.0)
    with pytest.raises(ValueError, match="method="):
        plan_budget(cs, lo, method="best")
    with pytest.raises(ValueError, match="max_combinations"):
        plan_budget(cs, lo * 2, method="exact", max_combinations=10)
    plans = plan_frontier(cs, n_budgets=10)
    acc = [p.accuracy for p in plans]
    assert all(b >= a - 1e-12 for a, b in zip(acc, acc[1:]))  # more budget never hurts
    assert plans[-1].accuracy == pytest.approx(max(a for b in [brute_force] for a in [brute_force(cs, 1e30)]))
    d = plans[3].to_dict()
    assert json.loads(json.dumps(d))["bins"][0]["bin"] == "easy"


# --- JSON shape -------------------------------------------------------------------------------------------

def example_json():
    return {
        "format": "ttc-jax.accuracy-curves/1",
        "bins": {"easy": 1, "hard": 3},
        "strategies": {
            "bon": {"cost": {"fixed": 2.0, "per_sample": 1.0},
                    "curves": {"easy": {"n": [1, 2, 4], "accuracy": [0.5, 0.6, 0.7], "num_questions": 50},
                               "hard": {"n": [1, 2, 4], "accuracy": [0.1, 0.15, 0.2]}}}},
        "larger_model": {"size_ratio": 2.0, "accuracy": {"easy": 0.8, "hard": 0.3}},
    }


def test_json_round_trip_and_normalised_shares():
    cs = curves_from_dict(example_json())
    assert cs.bins == {"easy": 0.25, "hard": 0.75}
    assert cs.strategies["bon"].curves["easy"].num_questions == 50
    again = curves_from_dict(json.loads(json.dumps(curves_to_dict(cs))))
    assert again == cs


def test_json_cost_from_model_configs():
    d = example_json()
    d["strategies"]["bon"]["cost"] = {"config": "tiny-ttt-linear", "prompt_len": 32, "sample_len": 16,
                                      "prm_config": "tiny-transformer"}
    cs = curves_from_dict(d)
    from ttc_jax.nn.config import get_config
    assert cs.strategies["bon"].cost == best_of_n_cost(get_config("tiny-ttt-linear"), 32, 16,
                                                        prm_cfg=get_config("tiny-transformer"))


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(format="other/2"), "format="),
    (lambda d: d.pop("bins"), "lack the key 'bins'"),
    (lambda d: d["strategies"]["bon"]["curves"].pop("hard"), "expected exactly"),
    (lambda d: d["strategies"]["bon"]["curves"]["easy"].update(n=[1, 1, 4]), "strictly increasing"),
    (lambda d: d["strategies"]["bon"]["curves"]["easy"].update(n=[0, 1, 4]), "integers >= 1"),
    (lambda d: d["strategies"]["bon"]["curves"]["easy"].update(accuracy=[0.5, 1.2, 0.7]), r"in \[0, 1\]"),
    (lambda d: d["strategies"]["bon"]["curves"]["easy"].update(accuracy=[0.5, 0.7]), "equal length"),
    (lambda d: d["strategies"]["bon"].update(cost={"per_sample": -1}), "per_sample"),
    (lambda d: d["strategies"]["bon"].update(cost={"flops": 3}), "expected"),
    (lambda d: d["bins"].update(easy=0), "bins"),
    (lambda d: d["larger_model"]["accuracy"].pop("hard"), "larger_model.accuracy"),
])
def test_json_errors(mutate, match):
    d = example_json()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        curves_from_dict(d)


# --- FLOPs-matched comparison (Snell et al. 2024) ------------------------------------------------------------

def test_flops_matched_multiplier():
    assert flops_matched_multiplier(1.0, 0.5) == 1.0  # same model: same compute
    assert flops_matched_multiplier(4.0, 1.0) == 4 + 9
    assert flops_matched_multiplier(4.0, 1e12) == pytest.approx(4.0)  # inference-dominated: just M
    # derivation: 6 M N Dp + 2 M N Di = 6 N Dp + 2 N X Di
    M, R, Dp = 14.0, 0.16, 1.0
    X = flops_matched_multiplier(M, R)
    assert 6 * M * Dp + 2 * M * R * Dp == pytest.approx(6 * Dp + 2 * X * R * Dp)
    with pytest.raises(ValueError, match="size_ratio"):
        flops_matched_multiplier(0.5, 1.0)
    with pytest.raises(ValueError, match="inference_to_pretraining"):
        flops_matched_multiplier(2.0, 0.0)


def test_compare_with_larger_model_per_bin_best_option():
    cs = synthetic_curves()
    cmp = compare_with_larger_model(cs, 2.0)
    assert cmp.multiplier == pytest.approx(4 + 3 * 3 / 2.0)
    assert cmp.budget == pytest.approx(cmp.multiplier * min(s.cost(1) for s in cs.strategies.values()))
    for row in cmp.per_bin:
        feasible = [o.accuracy for o in bin_options(cs, row["bin"]) if o.cost <= cmp.budget]
        assert row["small_accuracy"] == pytest.approx(max(feasible))
        assert row["winner"] == ("test_time" if row["small_accuracy"] > row["large_accuracy"] else "larger_model")
    assert cmp.large_accuracy == pytest.approx(sum(cs.bins[b] * cs.larger_model.accuracy[b] for b in cs.bins))
    assert cmp.pooled.accuracy == pytest.approx(plan_budget(cs, cmp.budget).accuracy)
    with pytest.raises(ValueError, match="larger_model"):
        compare_with_larger_model(CurveSet(cs.bins, cs.strategies), 1.0)


# --- held-out budgets ------------------------------------------------------------------------------------------

def law_curves(form: str) -> CurveSet:
    ns = (1, 2, 4, 8, 16, 32, 64, 128)
    params = {"easy": (-0.9, -0.5), "hard": (-3.0, -0.25)}
    curves = {}
    for b, (a, e) in params.items():
        if form == "exp_power":
            acc = [math.exp(a * n ** e) for n in ns]
        else:  # power_offset on the error rate
            acc = [1 - (0.05 + (-a / 4) * n ** e) for n in ns]
        curves[b] = Curve(ns, tuple(acc))
    return CurveSet({"easy": 1, "hard": 1}, {"s": Strategy("s", AffineCost(1.0, 1.0), curves)})


@pytest.mark.parametrize("form", ["exp_power", "power_offset"])
def test_holdout_on_curves_that_follow_the_law(form):
    rep = holdout_validation(law_curves(form), form=form)
    assert rep.max_abs_error < 1e-4
    assert all(r["n_fit"] == [1, 2, 4, 8] and r["n_test"] == [16, 32, 64, 128] for r in rep.curves)
    assert rep.plans and rep.plan_mean_abs_error < 1e-4 and abs(rep.plan_mean_regret) < 1e-4


def test_holdout_detects_a_wrong_form_and_needs_enough_points():
    wrong = holdout_validation(law_curves("power_offset"), form="exp_power")
    assert wrong.max_abs_error > 0.01  # the saturating-below-1 curves do not follow log acc = a n^b
    short = CurveSet({"x": 1}, {"s": Strategy("s", AffineCost(0.0, 1.0), {"x": Curve((1, 2, 4), (.2, .3, .35))})})
    with pytest.raises(ValueError, match="has 3 points; expected at least 5"):
        holdout_validation(short, form="power_offset")
