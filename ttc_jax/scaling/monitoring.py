"""The seed's monitoring quantities: cost per correct output, and the measured scaling exponent with its interval."""

from __future__ import annotations

import numpy as np

from ttc_jax.scaling.curves import CurveSet
from ttc_jax.scaling.fits import PowerLawFit, fit_power_law
from ttc_jax.scaling.planner import uniform_strategy_curve


def cost_per_correct(curves: CurveSet) -> dict[str, dict[str, list[float]]]:
    """Per strategy (same n in every bin): FLOPs per query / expected accuracy = FLOPs per correct output."""
    out = {}
    for name in curves.strategies:
        n, cost, acc = uniform_strategy_curve(curves, name)
        with np.errstate(divide="ignore"):
            cpc = np.where(acc > 0, cost / np.where(acc > 0, acc, 1.0), np.inf)
        out[name] = {"n": n.tolist(), "cost": cost.tolist(), "accuracy": acc.tolist(), "cost_per_correct": cpc.tolist()}
    return out


def scaling_exponents(curves: CurveSet, *, n_bootstrap: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> dict[str, PowerLawFit]:
    """Per strategy: error rate = a * (FLOPs per query)^b fitted over its n (all bins pooled by share);
    b < 0 is the measured scaling exponent, with a bootstrap interval over the n points."""
    out = {}
    for name in curves.strategies:
        _, cost, acc = uniform_strategy_curve(curves, name)
        err = np.clip(1.0 - acc, 1e-9, None)
        out[name] = fit_power_law(cost, err, n_bootstrap=n_bootstrap, ci=ci, seed=seed)
    return out
