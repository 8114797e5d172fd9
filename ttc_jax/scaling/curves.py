"""Measured accuracy curves per strategy and difficulty bin: the planner's input, and its JSON shape.

JSON shape ("format": "ttc-jax.accuracy-curves/1"); best-of-N runs of this project write it::

    {
      "format": "ttc-jax.accuracy-curves/1",
      "bins": {"easy": 0.3, "medium": 0.4, "hard": 0.3},   # share of queries per difficulty bin
                                                          # (normalised to sum 1; a list of names = equal shares)
      "strategies": {
        "best_of_n_prm": {
          "cost": {"fixed": 2.1e9, "per_sample": 9.6e8},  # FLOPs per query = fixed + n * per_sample, or
                                                          # {"config": "tiny-ttt-linear", "prompt_len": 64,
                                                          #  "sample_len": 128, "prm_config": "tiny-transformer"}
                                                          # to derive it with ttc_jax.scaling.flops.best_of_n_cost
          "curves": {                                     # one curve per bin, every bin present
            "easy":   {"n": [1, 2, 4, 8, 16], "accuracy": [0.62, 0.70, 0.76, 0.79, 0.81],
                       "num_questions": 200},             # num_questions optional (informational)
            "medium": {"n": [...], "accuracy": [...]},
            "hard":   {"n": [...], "accuracy": [...]}
          }
        },
        "majority_vote": {...}
      },
      "larger_model": {                                    # optional: for the FLOPs-matched comparison
        "size_ratio": 4.0,                                # M: parameters of the larger model / this one
        "accuracy": {"easy": 0.84, "medium": 0.55, "hard": 0.12}   # its accuracy per bin (one sample)
      }
    }

n: strictly increasing sample counts >= 1; accuracy: fraction correct in [0, 1] per n.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ttc_jax.scaling import _validate as V
from ttc_jax.scaling.flops import AffineCost, best_of_n_cost

FORMAT = "ttc-jax.accuracy-curves/1"


@dataclasses.dataclass(frozen=True)
class Curve:
    """Accuracy at each measured sample count n."""

    n: tuple[int, ...]
    accuracy: tuple[float, ...]
    num_questions: int | None = None

    def __post_init__(self):
        n, acc = tuple(self.n), tuple(float(a) for a in self.accuracy)
        if not n or len(n) != len(acc):
            raise ValueError(f"Curve n={list(n)} and accuracy={list(acc)} must be non-empty and of equal length")
        for v in n:
            if isinstance(v, bool) or not float(v).is_integer() or v < 1:
                raise ValueError(f"Curve n={list(n)} contains {v!r}; expected integers >= 1")
        n = tuple(int(v) for v in n)
        if any(b <= a for a, b in zip(n, n[1:])):
            raise ValueError(f"Curve n={list(n)} must be strictly increasing")
        for a in acc:
            if not (math.isfinite(a) and 0.0 <= a <= 1.0):
                raise ValueError(f"Curve accuracy={list(acc)} contains {a!r}; expected fractions in [0, 1]")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "accuracy", acc)


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    cost: AffineCost
    curves: Mapping[str, Curve]


@dataclasses.dataclass(frozen=True)
class LargerModel:
    size_ratio: float
    accuracy: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class CurveSet:
    """Bins with their query shares, strategies with costs and per-bin curves, optional larger model."""

    bins: Mapping[str, float]
    strategies: Mapping[str, Strategy]
    larger_model: LargerModel | None = None

    def __post_init__(self):
        if not self.bins:
            raise ValueError("CurveSet.bins is empty; expected at least one difficulty bin")
        if not self.strategies:
            raise ValueError("CurveSet.strategies is empty; expected at least one strategy")
        for name, w in self.bins.items():
            V.positive_number(f"bins[{name!r}]", w)
        total = sum(self.bins.values())
        object.__setattr__(self, "bins", {k: float(v) / total for k, v in self.bins.items()})
        for s in self.strategies.values():
            missing = set(self.bins) - set(s.curves)
            extra = set(s.curves) - set(self.bins)
            if missing or extra:
                raise ValueError(f"strategy {s.name!r} has curves for bins {sorted(s.curves)}; expected exactly "
                                 f"{sorted(self.bins)}")
        if self.larger_model is not None and set(self.larger_model.accuracy) != set(self.bins):
            raise ValueError(f"larger_model.accuracy has bins {sorted(self.larger_model.accuracy)}; expected "
                             f"{sorted(self.bins)}")

    def replace_curves(self, fn) -> "CurveSet":
        """A copy with every curve replaced by fn(strategy_name, bin_name, curve)."""
        strategies = {s.name: Strategy(s.name, s.cost, {b: fn(s.name, b, c) for b, c in s.curves.items()})
                      for s in self.strategies.values()}
        return CurveSet(self.bins, strategies, self.larger_model)


def _cost_from_dict(name: str, d: Any) -> AffineCost:
    if not isinstance(d, Mapping):
        raise ValueError(f"strategies[{name!r}].cost={d!r}; expected an object")
    if "fixed" in d or "per_sample" in d:
        return AffineCost(fixed=float(d.get("fixed", 0.0)), per_sample=float(d["per_sample"]))
    if "config" in d:
        from ttc_jax.nn.config import get_config

        prm = d.get("prm_config")
        return best_of_n_cost(get_config(d["config"]), int(d["prompt_len"]), int(d["sample_len"]),
                              prm_cfg=get_config(prm) if prm else None)
    raise ValueError(f"strategies[{name!r}].cost={d!r}; expected {{'fixed', 'per_sample'}} or "
                     "{'config', 'prompt_len', 'sample_len'[, 'prm_config']}")


def curves_from_dict(d: Any) -> CurveSet:
    """Parse the documented JSON shape (see module docstring)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"accuracy curves must be a JSON object; got {type(d).__name__}")
    fmt = d.get("format", FORMAT)
    if fmt != FORMAT:
        raise ValueError(f"format={fmt!r}; expected {FORMAT!r}")
    for key in ("bins", "strategies"):
        if key not in d:
            raise ValueError(f"accuracy curves lack the key {key!r}; expected 'bins' and 'strategies'")
    bins = d["bins"]
    if isinstance(bins, (list, tuple)):
        bins = {str(b): 1.0 for b in bins}
    if not isinstance(bins, Mapping):
        raise ValueError(f"bins={bins!r}; expected an object name -> share or a list of names")
    if not isinstance(d["strategies"], Mapping):
        raise ValueError(f"strategies has type {type(d['strategies']).__name__}; expected an object "
                         "name -> {'cost', 'curves'}")
    for name, share in (bins.items() if isinstance(bins, Mapping) else ()):
        if isinstance(share, bool) or not isinstance(share, (int, float)):
            raise ValueError(f"bins[{name!r}]={share!r}; expected a number (the share of queries in that bin)")
    strategies = {}
    for name, s in d["strategies"].items():
        if not isinstance(s, Mapping) or "curves" not in s or "cost" not in s:
            raise ValueError(f"strategies[{name!r}] must be an object with 'cost' and 'curves'")
        curves = {}
        for b, c in s["curves"].items():
            try:
                curves[str(b)] = Curve(tuple(c["n"]), tuple(c["accuracy"]), c.get("num_questions"))
            except (KeyError, TypeError) as err:
                raise ValueError(f"strategies[{name!r}].curves[{b!r}]={c!r}; expected 'n' and 'accuracy' lists "
                                 f"({err})") from None
        strategies[str(name)] = Strategy(str(name), _cost_from_dict(name, s["cost"]), curves)
    larger = None
    if d.get("larger_model") is not None:
        lm = d["larger_model"]
        if not isinstance(lm, Mapping) or "accuracy" not in lm or not isinstance(lm["accuracy"], Mapping):
            raise ValueError(f"larger_model={lm!r}; expected an object with 'size_ratio' and 'accuracy' "
                             "(bin name -> accuracy)")
        for b, a in lm["accuracy"].items():
            if isinstance(a, bool) or not isinstance(a, (int, float)):
                raise ValueError(f"larger_model.accuracy[{b!r}]={a!r}; expected a number in [0, 1]")
        larger = LargerModel(size_ratio=V.positive_number("larger_model.size_ratio", lm.get("size_ratio")),
                             accuracy={str(k): float(v) for k, v in lm["accuracy"].items()})
    return CurveSet({str(k): float(v) for k, v in bins.items()}, strategies, larger)


def curves_to_dict(cs: CurveSet) -> dict:
    out = {
        "format": FORMAT,
        "bins": dict(cs.bins),
        "strategies": {
            s.name: {"cost": s.cost.to_dict(),
                     "curves": {b: {"n": list(c.n), "accuracy": list(c.accuracy),
                                    **({"num_questions": c.num_questions} if c.num_questions is not None else {})}
                                for b, c in s.curves.items()}}
            for s in cs.strategies.values()},
    }
    if cs.larger_model is not None:
        out["larger_model"] = {"size_ratio": cs.larger_model.size_ratio, "accuracy": dict(cs.larger_model.accuracy)}
    return out


def synthetic_curves(n_max: int = 64, *, noise: float = 0.0, seed: int = 0) -> CurveSet:
    """Demo curves with a known shape (until measured best-of-N curves exist).

    Bins easy / medium / hard with single-sample success p = 0.6 / 0.25 / 0.05.
    "best_of_n_prm": acc = 0.95 (1 - (1 - p)^n), cost 1e9 + 1.5e9 n (generation plus PRM scoring);
    "majority_vote": acc = p + (m - p)(1 - exp(-(n - 1) / 4)) with m = 0.9 / 0.45 / 0.06, cost 1e9 + 1e9 n.
    Both are concave in n, hence in cost. `noise` adds N(0, noise) to the accuracies (clipped to [0, 1]).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ns = [1 << i for i in range(int(math.log2(n_max)) + 1)]
    p = {"easy": 0.6, "medium": 0.25, "hard": 0.05}
    cap = {"easy": 0.9, "medium": 0.45, "hard": 0.06}

    def curve(f):
        acc = np.clip(np.array([f(n) for n in ns]) + noise * rng.standard_normal(len(ns)), 0.0, 1.0)
        return Curve(tuple(ns), tuple(float(a) for a in acc))

    bon = {b: curve(lambda n, q=q: 0.95 * (1 - (1 - q) ** n)) for b, q in p.items()}
    maj = {b: curve(lambda n, q=q, m=cap[b]: q + (m - q) * (1 - math.exp(-(n - 1) / 4))) for b, q in p.items()}
    return CurveSet(
        bins={"easy": 0.3, "medium": 0.4, "hard": 0.3},
        strategies={"best_of_n_prm": Strategy("best_of_n_prm", AffineCost(1e9, 1.5e9), bon),
                    "majority_vote": Strategy("majority_vote", AffineCost(1e9, 1e9), maj)},
        larger_model=LargerModel(size_ratio=4.0, accuracy={"easy": 0.9, "medium": 0.75, "hard": 0.45}),
    )
