"""Per-query choices: quantile difficulty bins, the best affordable (strategy, N), the rule at N."""

from __future__ import annotations

import numpy as np
import pytest

from ttc_jax.pipeline.plan import DifficultyBins, choose_pool, rule_at
from ttc_jax.scaling.curves import curves_from_dict

CURVES = curves_from_dict({"bins": {"easy": 1, "medium": 2, "hard": 1}, "strategies": {
    "majority": {"cost": {"fixed": 0, "per_sample": 1}, "curves": {
        "easy": {"n": [1, 4, 16], "accuracy": [0.6, 0.8, 0.85]},
        "medium": {"n": [1, 4, 16], "accuracy": [0.3, 0.4, 0.5]},
        "hard": {"n": [1, 4, 16], "accuracy": [0.1, 0.1, 0.2]}}},
    "weighted_best_of_n_prm": {"cost": {"fixed": 0, "per_sample": 1}, "curves": {
        "easy": {"n": [1, 4, 16], "accuracy": [0.6, 0.8, 0.9]},
        "medium": {"n": [1, 4, 16], "accuracy": [0.3, 0.45, 0.5]},
        "hard": {"n": [1, 4, 16], "accuracy": [0.1, 0.15, 0.2]}}},
    "dvts": {"cost": {"fixed": 0, "per_sample": 1}, "curves": {   # not executable by the pipeline
        "easy": {"n": [4], "accuracy": [1.0]}, "medium": {"n": [4], "accuracy": [1.0]},
        "hard": {"n": [4], "accuracy": [1.0]}}}}})


def test_calibrated_bins_hold_their_shares():
    scores = np.random.default_rng(0).random(400)
    bins = DifficultyBins.calibrate(scores, CURVES.bins)
    got = [bins.bin_of(s) for s in scores]
    share = {b: got.count(b) / len(got) for b in bins.names}
    assert bins.names == ("easy", "medium", "hard")
    np.testing.assert_allclose([share["easy"], share["medium"], share["hard"]], [0.25, 0.5, 0.25], atol=0.01)
    assert bins.bin_of(1.0) == "easy" and bins.bin_of(-1.0) == "hard"
    with pytest.raises(ValueError, match="thresholds"):
        DifficultyBins(("a", "b", "c"), (0.2, 0.5))
    with pytest.raises(ValueError, match="calibration scores"):
        DifficultyBins.calibrate([0.5], CURVES.bins)


def test_choose_pool_best_affordable_then_cheapest():
    # cost: N samples, + 1 per sample for the PRM
    cost = lambda s, n: n * (2.0 if "prm" in s else 1.0)
    c = choose_pool(CURVES, "easy", 100.0, cost, have_prm=True)
    assert (c.strategy, c.n, c.predicted) == ("weighted_best_of_n_prm", 16, 0.9)
    # 16 PRM samples cost 32 > 20: majority at 16 (0.85) beats weighted at 4 (0.8)
    c = choose_pool(CURVES, "easy", 20.0, cost, have_prm=True)
    assert (c.strategy, c.n) == ("majority", 16)
    # equal accuracy (easy, N=4: 0.8 both): the cheaper one
    c = choose_pool(CURVES, "easy", 9.0, cost, have_prm=True)
    assert (c.strategy, c.n) == ("majority", 4)
    # no PRM: PRM rules are never chosen; dvts (not executable) never is
    c = choose_pool(CURVES, "medium", 1e9, cost, have_prm=False)
    assert (c.strategy, c.n) == ("majority", 16)
    assert choose_pool(CURVES, "hard", 0.5, cost, have_prm=True) is None


def test_rule_at_largest_measured_n():
    assert rule_at(CURVES, "medium", 5, have_prm=True) == "weighted_best_of_n_prm"  # at N=4: 0.45 > 0.4
    assert rule_at(CURVES, "medium", 5, have_prm=False) == "majority"
    assert rule_at(CURVES, "hard", 1, have_prm=True) == "majority"  # tie at N=1: the first listed
