"""Power-law fits with bootstrap intervals.

- `fit_power_law(x, y)`: y = a x^b, ordinary least squares of log y on log x.
- `fit_power_law(x, y, offset=True)`: y = c + a x^b with a, c > 0 (e.g. loss or error rate with an
  irreducible floor c as x grows and b < 0), least squares in log space,
  log y_pred = logsumexp(log a + b log x, log c), multi-start L-BFGS in float64.
- `fit_exp_power_law(k, coverage)`: the exponentiated power law of repeated sampling
  (Brown et al. 2024), log c = a k^b with a < 0; least squares of log(-log c) on log k.

Intervals are percentile bootstrap intervals: points resampled with replacement (as multiplicity
weights, so all resamples are solved in one vectorised call).
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.scaling import _validate as V
from ttc_jax.scaling._bootstrap import percentile_intervals, resample_weights
from ttc_jax.scaling.optim import minimize_lbfgs_batched


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """y = offset + a x^b (offset is 0 unless fitted); `loss` is the sum of squared log residuals."""

    a: float
    b: float
    offset: float
    has_offset: bool
    loss: float
    n_points: int
    intervals: Mapping[str, tuple[float, float]] | None = None
    ci: float | None = None
    samples: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)  # [n_boot, 3] a, b, offset

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "offset": self.offset}

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return self.offset + self.a * x ** self.b

    def to_dict(self) -> dict:
        out = {"law": "power_offset" if self.has_offset else "power", **self.params, "loss": self.loss,
               "n_points": self.n_points}
        if self.intervals is not None:
            out.update(ci=self.ci, intervals={k: list(v) for k, v in self.intervals.items()})
        return out


@dataclasses.dataclass(frozen=True)
class ExpPowerLawFit:
    """log c = a k^b, i.e. c(k) = exp(a k^b); `loss` is the sum of squared residuals of log(-log c)."""

    a: float
    b: float
    loss: float
    n_points: int
    intervals: Mapping[str, tuple[float, float]] | None = None
    ci: float | None = None
    samples: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)  # [n_boot, 2] a, b

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b}

    def predict(self, k) -> np.ndarray:
        k = np.asarray(k, dtype=np.float64)
        return np.exp(self.a * k ** self.b)

    def to_dict(self) -> dict:
        out = {"law": "exp_power", **self.params, "loss": self.loss, "n_points": self.n_points}
        if self.intervals is not None:
            out.update(ci=self.ci, intervals={k: list(v) for k, v in self.intervals.items()})
        return out


def _weighted_line(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares v ~ c0 + c1 u for each row of weights w [R, n]; returns (c0 [R], c1 [R])."""
    sw = w.sum(-1)
    mu = (w * u).sum(-1) / sw
    mv = (w * v).sum(-1) / sw
    du = u - mu[:, None]
    suu = (w * du * du).sum(-1)
    c1 = np.where(suu > 0, (w * du * (v - mv[:, None])).sum(-1) / np.where(suu > 0, suu, 1.0), np.nan)
    return mv - c1 * mu, c1


def _check_xy(x, y, xname: str, yname: str, n_params: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = V.float_array(xname, x, positive=True)
    y = V.float_array(yname, y, positive=True)
    V.same_length(**{xname: x, yname: y})
    V.enough_points(len(x), n_params, what)
    if np.unique(x).size < 2:
        raise ValueError(f"{xname}={V._show(x)} has a single distinct value; expected at least 2 to fit a slope")
    return x, y


def fit_power_law(x, y, *, offset: bool = False, n_bootstrap: int = 0, ci: float = 0.95,
                  seed: int = 0) -> PowerLawFit:
    """Fit y = a x^b (or y = c + a x^b with offset=True) by least squares in log space.

    x, y: 1-D, positive, finite, equal length; at least 2 points (3 with the offset).
    n_bootstrap > 0 adds percentile intervals for a, b (and the offset) at level `ci`.
    """
    x, y = _check_xy(x, y, "x", "y", 3 if offset else 2, "fit_power_law")
    n_bootstrap = V.positive_int("n_bootstrap", n_bootstrap, allow_zero=True)
    lx, ly = np.log(x), np.log(y)
    if not offset:
        c0, c1 = _weighted_line(lx, ly, np.ones((1, len(x))))
        a, b = float(np.exp(c0[0])), float(c1[0])
        loss = float(((ly - (c0[0] + c1[0] * lx)) ** 2).sum())
        intervals = samples = None
        if n_bootstrap:
            b0, b1 = _weighted_line(lx, ly, resample_weights(len(x), n_bootstrap, seed))
            samples = np.stack([np.exp(b0), b1, np.zeros_like(b0)], axis=-1)
            intervals = percentile_intervals(("a", "b"), samples, ci)
        return PowerLawFit(a=a, b=b, offset=0.0, has_offset=False, loss=loss, n_points=len(x),
                           intervals=intervals, ci=ci if n_bootstrap else None, samples=samples)
    return _fit_offset(lx, ly, n_bootstrap, ci, seed)


# --- y = c + a x^b -------------------------------------------------------------------------------------------
# Parameters p = (log a, b, log c) with x centred: log a' = log a + b * mean(log x), for conditioning.

def _offset_objective(p, u, ly, w):
    la, b, lc = p
    pred = jnp.logaddexp(la + b * u, lc)
    return jnp.sum(w * (pred - ly) ** 2)


@partial(jax.jit, static_argnames=("max_iter",))
def _solve_offset(x0, u, ly, weights, *, max_iter: int):
    vg = jax.value_and_grad(_offset_objective)
    per_lane = weights.shape[0] != 1

    def fg(x, lane):
        w = weights[lane] if per_lane else weights[0]
        return jax.vmap(vg, in_axes=(0, None, None, 0 if per_lane else None))(x, u, ly, w)

    return minimize_lbfgs_batched(fg, x0, max_iter=max_iter, gtol=1e-10, ftol=0.0)



def _offset_starts(u: np.ndarray, ly: np.ndarray) -> np.ndarray:
    ymin = ly.min()
    starts = []
    for b, dc in itertools.product((-2.0, -1.0, -0.5, -0.2, -0.05, 0.05, 0.2, 0.5, 1.0), (-6.0, -2.0, -0.5, -0.05)):
        lc = ymin + dc
        resid = np.log(np.maximum(np.exp(ly) - np.exp(lc), 1e-300))
        la = float(np.mean(resid - b * u))
        starts.append((la, b, lc))
    return np.array(starts)


def _fit_offset(lx: np.ndarray, ly: np.ndarray, n_bootstrap: int, ci: float, seed: int) -> PowerLawFit:
    mu = float(lx.mean())
    u = lx - mu
    n = len(lx)
    with jax.enable_x64(True):
        res = _solve_offset(jnp.asarray(_offset_starts(u, ly)), jnp.asarray(u), jnp.asarray(ly),
                            jnp.ones((1, n)), max_iter=2000)
        f = np.where(np.isfinite(np.asarray(res.f)), np.asarray(res.f), np.inf)
        i = int(np.argmin(f))
        best = np.asarray(res.x[i])
        samples = intervals = None
        if n_bootstrap:
            w = resample_weights(n, n_bootstrap, seed)
            boot = _solve_offset(jnp.asarray(np.broadcast_to(best, (n_bootstrap, 3))), jnp.asarray(u),
                                 jnp.asarray(ly), jnp.asarray(w), max_iter=2000)
            bx = np.where(np.isfinite(np.asarray(boot.f))[:, None], np.asarray(boot.x), np.nan)
            samples = np.stack([np.exp(bx[:, 0] - bx[:, 1] * mu), bx[:, 1], np.exp(bx[:, 2])], axis=-1)
            intervals = percentile_intervals(("a", "b", "offset"), samples, ci)
    la, b, lc = best
    return PowerLawFit(a=float(np.exp(la - b * mu)), b=float(b), offset=float(np.exp(lc)), has_offset=True,
                       loss=float(f[i]), n_points=n, intervals=intervals, ci=ci if n_bootstrap else None,
                       samples=samples)


def fit_exp_power_law(k, coverage, *, n_bootstrap: int = 0, ci: float = 0.95, seed: int = 0) -> ExpPowerLawFit:
    """Fit log c = a k^b to coverage (pass@k) values c in (0, 1) at sample counts k > 0.

    Least squares of log(-log c) = log(-a) + b log k. At least 2 points.
    """
    k, c = _check_xy(k, coverage, "k", "coverage", 2, "fit_exp_power_law")
    if (c >= 1).any():
        i = int(np.flatnonzero(c >= 1)[0])
        raise ValueError(f"coverage contains {float(c[i])!r} at index {i}; expected values strictly between 0 and 1 "
                         "(log(-log c) is undefined at c = 1)")
    n_bootstrap = V.positive_int("n_bootstrap", n_bootstrap, allow_zero=True)
    lk, v = np.log(k), np.log(-np.log(c))
    c0, c1 = _weighted_line(lk, v, np.ones((1, len(k))))
    loss = float(((v - (c0[0] + c1[0] * lk)) ** 2).sum())
    samples = intervals = None
    if n_bootstrap:
        b0, b1 = _weighted_line(lk, v, resample_weights(len(k), n_bootstrap, seed))
        samples = np.stack([-np.exp(b0), b1], axis=-1)
        intervals = percentile_intervals(("a", "b"), samples, ci)
    return ExpPowerLawFit(a=float(-np.exp(c0[0])), b=float(c1[0]), loss=loss, n_points=len(k),
                          intervals=intervals, ci=ci if n_bootstrap else None, samples=samples)
