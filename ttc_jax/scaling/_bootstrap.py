"""Nonparametric bootstrap as resampling weights, so every resample has the same shape and fits vectorise."""

from __future__ import annotations

import numpy as np

from ttc_jax.scaling._validate import positive_int, probability


def resample_weights(n_points: int, n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """[n_bootstrap, n_points] multiplicities of a resample with replacement (each row sums to n_points)."""
    n_bootstrap = positive_int("n_bootstrap", n_bootstrap)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_points, size=(n_bootstrap, n_points))
    w = np.zeros((n_bootstrap, n_points))
    np.add.at(w, (np.arange(n_bootstrap)[:, None], idx), 1.0)
    return w


def percentile_intervals(names: tuple[str, ...], samples: np.ndarray, ci: float) -> dict[str, tuple[float, float]]:
    """Percentile interval per column of `samples` [n_bootstrap, len(names)]; non-finite draws are ignored."""
    ci = probability("ci", ci)
    lo, hi = 50 * (1 - ci), 50 * (1 + ci)
    out = {}
    for j, name in enumerate(names):
        col = samples[:, j]
        col = col[np.isfinite(col)]
        out[name] = (float(np.percentile(col, lo)), float(np.percentile(col, hi))) if col.size else (np.nan, np.nan)
    return out
