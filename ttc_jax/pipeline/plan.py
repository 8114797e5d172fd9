"""Per-query choices: difficulty bin from probe scores, then (strategy, N) from measured curves, or
(N, adaptation steps) from `ttc_jax.scaling.allocate` when the query comes with text to adapt on.

Pure functions on numbers; the pipeline supplies the costs of its own executed computations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from ttc_jax.scaling.allocate import AdaptationGain, allocate
from ttc_jax.scaling.curves import CurveSet

# selection rules the pipeline executes over a pool (curves may hold others; they are not chosen)
EXECUTABLE = ("majority", "weighted_best_of_n_prm", "best_of_n_prm_last", "best_of_n_prm_min",
              "best_of_n_prm_prod")


def needs_prm(strategy: str) -> bool:
    return "prm" in strategy


@dataclasses.dataclass(frozen=True)
class Choice:
    strategy: str
    n: int  # candidates selected among
    steps: int  # adaptation steps per copy (0: no adaptation)
    predicted: float  # curve accuracy (steps 0), or allocate's predicted success (steps > 0)
    cost: float  # predicted FLOPs of the whole query (upper bound: every sample at full length)


@dataclasses.dataclass(frozen=True)
class DifficultyBins:
    """Bins from a difficulty score (higher = easier): score >= thresholds[0] -> names[0], ... (easiest
    first); below every threshold -> names[-1]. Thresholds are quantiles of calibration scores, so
    each bin holds its share of queries (Snell et al.: bins of model-predicted difficulty)."""

    names: tuple[str, ...]
    thresholds: tuple[float, ...]  # len(names) - 1, non-increasing

    def __post_init__(self):
        if len(self.thresholds) != len(self.names) - 1 or any(
                b > a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise ValueError(f"thresholds={list(self.thresholds)}; expected {len(self.names) - 1} non-increasing "
                             f"values for bins {list(self.names)}")

    @classmethod
    def calibrate(cls, scores: Sequence[float], shares: Mapping[str, float]) -> "DifficultyBins":
        """Thresholds so that the bins (ordered easiest first, as in `shares`) hold their shares of `scores`."""
        s = np.asarray(scores, np.float64)
        if s.ndim != 1 or s.size < len(shares) or not np.isfinite(s).all():
            raise ValueError(f"scores has shape {s.shape}; expected >= {len(shares)} finite calibration scores")
        names = tuple(shares)
        w = np.array([shares[b] for b in names], np.float64)
        cum = np.cumsum(w / w.sum())[:-1]  # share of queries at least as easy as each boundary
        return cls(names, tuple(float(np.quantile(s, 1.0 - c)) for c in cum))

    def bin_of(self, score: float) -> str:
        for name, t in zip(self.names, self.thresholds):
            if score >= t:
                return name
        return self.names[-1]

    def to_dict(self) -> dict:
        return {"names": list(self.names), "thresholds": list(self.thresholds)}


def choose_pool(curves: CurveSet, bin_name: str, budget: float, cost: Callable[[str, int], float], *,
                have_prm: bool) -> Choice | None:
    """The (strategy, N) with the highest measured accuracy in `bin_name` whose cost(strategy, N) fits the
    budget (ties: the cheaper), over the measured points; None if nothing fits."""
    best = None
    for name, strat in curves.strategies.items():
        if name not in EXECUTABLE or (needs_prm(name) and not have_prm):
            continue
        curve = strat.curves[bin_name]
        for n, acc in zip(curve.n, curve.accuracy):
            c = cost(name, n)
            if c > budget:
                continue
            if best is None or acc > best.predicted + 1e-12 or (abs(acc - best.predicted) <= 1e-12 and c < best.cost):
                best = Choice(name, int(n), 0, float(acc), float(c))
    return best


def rule_at(curves: CurveSet, bin_name: str, n: int, *, have_prm: bool) -> str:
    """The executable selection rule with the best measured accuracy at the largest measured N <= n."""
    best, best_acc = "majority", -math.inf
    for name, strat in curves.strategies.items():
        if name not in EXECUTABLE or (needs_prm(name) and not have_prm):
            continue
        curve = strat.curves[bin_name]
        pts = [a for m, a in zip(curve.n, curve.accuracy) if m <= n]
        if pts and pts[-1] > best_acc + 1e-12:
            best, best_acc = name, pts[-1]
    return best


def choose_adapted(budget: float, *, sample_cost: float, step_cost: float, gain: AdaptationGain,
                   max_steps: int) -> tuple[int, int, float]:
    """(N copies, steps each, predicted success) from `allocate` (each copy: its own adaptation, prefill,
    sample, scoring)."""
    a = allocate(budget, sample_flops=sample_cost, step_flops=step_cost, gain=gain, max_steps=max_steps)
    return a.n, a.steps, a.success
