"""Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta.

Following Hoffmann et al. (2022) and Epoch AI's replication (Besiroglu et al.
2024): parameters are (a, b, e, alpha, beta) with A = exp(a), B = exp(b),
E = exp(e); the prediction in log space is

    log L_pred = logsumexp(a - alpha log N, b - beta log D, e)

and the objective is the Huber loss (delta 1e-3) of log L_pred - log L, summed
over points. It is minimised with L-BFGS from the published grid of 4,500
starts (alpha, beta in 0..2 step .5; e in -1..1 step .5; a, b in 0..25 step 5),
keeping the best. All starts run in one compiled, vectorised solve
(`ttc_jax.scaling.optim`) with scipy L-BFGS-B's default stopping rules, by
default in float32; the 8 best are then re-scored and polished in float64
(gradient test only), so the reported optimum is a float64 one.

Bootstrap intervals (as Epoch AI did): resample the points with replacement,
refit each resample from the full-data optimum, take percentile intervals.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ttc_jax.scaling import _validate as V
from ttc_jax.scaling._bootstrap import percentile_intervals, resample_weights
from ttc_jax.scaling.optim import minimize_lbfgs_batched

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
DEFAULT_DELTA = 1e-3


def chinchilla_start_grid() -> np.ndarray:
    """The 4,500 published starts as rows (a, b, e, alpha, beta)."""
    alpha = np.arange(0.0, 2.5, 0.5)
    beta = np.arange(0.0, 2.5, 0.5)
    e = np.arange(-1.0, 1.5, 0.5)
    a = np.arange(0.0, 30.0, 5.0)
    b = np.arange(0.0, 30.0, 5.0)
    return np.array([[ai, bi, ei, al, be] for al, be, ei, ai, bi in itertools.product(alpha, beta, e, a, b)])


def huber(r, delta: float):
    """Huber loss: r^2/2 inside [-delta, delta], linear outside (works on numpy and jax arrays)."""
    ar = abs(r)
    return jnp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)) if isinstance(r, jax.Array) else \
        np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _objective(p: Float[Array, " 5"], logN, logD, logL, w, delta: float):
    """Huber objective of one lane (the definition; `_value_and_grad` is what the solver calls)."""
    a, b, e, alpha, beta = p
    pred = jax.nn.logsumexp(jnp.stack([a - alpha * logN, b - beta * logD, jnp.broadcast_to(e, logN.shape)]), axis=0)
    return jnp.sum(w * huber(pred - logL, delta))


def _value_and_grad(x: Float[Array, "S 5"], logN, logD, logL, w, delta: float):
    """Objective and its analytic gradient for S lanes at once; w is [n] (shared) or [S, n].

    With t = (a - alpha log N, b - beta log D, e), p = softmax(t), r = logsumexp(t) - log L and
    h = clip(r, -delta, delta) = huber'(r): d/da = sum w h p1, d/db = sum w h p2, d/de = sum w h p3,
    d/dalpha = -sum w h p1 log N, d/dbeta = -sum w h p2 log D. (Cheaper than autodiff of `_objective`.)
    """
    a, b, e, alpha, beta = (x[:, i:i + 1] for i in range(5))
    t1 = a - alpha * logN
    t2 = b - beta * logD
    m = jnp.maximum(jnp.maximum(t1, t2), e)
    u1, u2, u3 = jnp.exp(t1 - m), jnp.exp(t2 - m), jnp.exp(e - m)
    s = u1 + u2 + u3
    r = m + jnp.log(s) - logL
    h = w * jnp.clip(r, -delta, delta)
    f = jnp.sum(h * (jnp.clip(r, -delta, delta) * -0.5 + r), axis=1)  # huber(r) = h_r (r - h_r / 2)
    q = h / s
    g1, g2, g3 = q * u1, q * u2, q * u3
    grad = jnp.stack([g1.sum(1), g2.sum(1), g3.sum(1), -(g1 * logN).sum(1), -(g2 * logD).sum(1)], axis=1)
    return f, grad


def huber_objective_numpy(p: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                          delta: float = DEFAULT_DELTA) -> tuple[float, np.ndarray]:
    """The same objective and its gradient in numpy (for scipy baselines and checks)."""
    a, b, e, alpha, beta = p
    t = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    m = t.max(0)
    ex = np.exp(t - m)
    s = ex.sum(0)
    r = m + np.log(s) - logL
    dh = np.clip(r, -delta, delta)
    soft = ex / s
    g = np.array([(dh * soft[0]).sum(), (dh * soft[1]).sum(), (dh * soft[2]).sum(),
                  -(dh * soft[0] * logN).sum(), -(dh * soft[1] * logD).sum()])
    return float(huber(r, delta).sum()), g


# Stopping rules. The multi-start pass uses scipy L-BFGS-B's defaults (pgtol 1e-5, factr 1e7 -> ftol 2.2e-9,
# relative to max(|f|, 1)); since the objective here is ~1e-3 that test is loose, so the best starts are then
# polished (and bootstrap refits run) with a gradient test alone, which the bootstrap needs: a refit that
# starts at the full-data optimum would otherwise stop after one tiny step.
SCAN_TOL = dict(gtol=1e-5, ftol=2.220446049250313e-09)
POLISH_TOL = dict(gtol=1e-9, ftol=0.0)
N_POLISH = 8


def _lane_value_and_grad(logN, logD, logL, weights, delta):
    """Batched objective in the dtype of the lanes; weights [1, n] are shared, [S, n] are one row per lane."""
    def fg(x, lane):
        cast = lambda v: v.astype(x.dtype)
        w = weights[0] if weights.shape[0] == 1 else weights[lane]
        return _value_and_grad(x, cast(logN), cast(logD), cast(logL), cast(w), delta)
    return fg


@partial(jax.jit, static_argnames=("delta", "max_iter", "n_polish", "scan_dtype"))
def _solve_starts(x0, logN, logD, logL, *, delta: float, max_iter: int, n_polish: int, scan_dtype: str):
    """All starts (scipy-default tolerances, in scan_dtype), then the n_polish best refined in float64."""
    fg = _lane_value_and_grad(logN, logD, logL, jnp.ones((1, logN.shape[0]), logN.dtype), delta)
    scan = minimize_lbfgs_batched(fg, x0.astype(scan_dtype), max_iter=max_iter, **SCAN_TOL)
    f_scan = fg(scan.x.astype(x0.dtype), jnp.zeros(x0.shape[0], jnp.int32))[0]  # re-scored in float64
    _, top = jax.lax.top_k(-jnp.where(jnp.isfinite(f_scan), f_scan, jnp.inf), n_polish)
    polish = minimize_lbfgs_batched(fg, scan.x[top].astype(x0.dtype), max_iter=2 * max_iter, **POLISH_TOL)
    return scan._replace(f=f_scan), polish


@partial(jax.jit, static_argnames=("delta", "max_iter"))
def _solve_weighted(x0, logN, logD, logL, weights, *, delta: float, max_iter: int):
    """One lane per row of weights (bootstrap resamples), float64, polish tolerances."""
    fg = _lane_value_and_grad(logN, logD, logL, weights, delta)
    return minimize_lbfgs_batched(fg, x0, max_iter=max_iter, **POLISH_TOL)


def _as_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def _run_starts(x0, logN, logD, logL, delta, max_iter, n_polish=N_POLISH, scan_dtype="float32"):
    with jax.enable_x64(True):
        out = _solve_starts(jnp.asarray(x0, jnp.float64), *(jnp.asarray(v, jnp.float64) for v in (logN, logD, logL)),
                            delta=float(delta), max_iter=int(max_iter), n_polish=min(int(n_polish), len(x0)),
                            scan_dtype=scan_dtype)
        return _as_numpy(out)


def _run_weighted(x0, logN, logD, logL, weights, delta, max_iter):
    with jax.enable_x64(True):
        out = _solve_weighted(jnp.asarray(x0, jnp.float64), *(jnp.asarray(v, jnp.float64) for v in (logN, logD, logL)),
                              jnp.asarray(weights, jnp.float64), delta=float(delta), max_iter=int(max_iter))
        return _as_numpy(out)


def _natural(p: np.ndarray) -> np.ndarray:
    """(a, b, e, alpha, beta) -> (E, A, B, alpha, beta)."""
    p = np.asarray(p, dtype=np.float64)
    return np.stack([np.exp(p[..., 2]), np.exp(p[..., 0]), np.exp(p[..., 1]), p[..., 3], p[..., 4]], axis=-1)


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
    """Best fit of L(N, D) = E + A/N^alpha + B/D^beta, with optional bootstrap intervals."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    loss: float  # Huber objective at the optimum (after polishing), summed over points
    n_points: int
    n_starts: int
    n_converged: int  # starts stopped by the gradient or relative-decrease test (not the iteration cap)
    n_at_best: int  # starts whose scan ended within 1e-9 of the best objective
    scan_loss: float  # best objective of the multi-start pass before polishing (scipy-default tolerances)
    delta: float = DEFAULT_DELTA
    intervals: Mapping[str, tuple[float, float]] | None = None
    ci: float | None = None
    samples: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)  # [n_bootstrap, 5]

    @property
    def params(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in PARAM_NAMES}

    def predict(self, N, D) -> np.ndarray:
        """Predicted loss at N parameters and D training tokens."""
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    def compute_optimal(self, C, flops_per_param_token: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """N_opt(C), D_opt(C) minimising L subject to C = k N D (k = 6 by default).

        Closed form: N_opt = G (C/k)^(beta/(alpha+beta)), D_opt = (C/k)^(alpha/(alpha+beta)) / G with
        G = (alpha A / (beta B))^(1/(alpha+beta)).
        """
        C = V.float_array("C", C, positive=True, ndim=None)
        return _compute_optimal(C / flops_per_param_token, self.A, self.B, self.alpha, self.beta)

    def compute_optimal_intervals(self, C, flops_per_param_token: float = 6.0
                                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Percentile intervals of N_opt(C), D_opt(C) over the bootstrap draws."""
        if self.samples is None:
            raise ValueError("compute_optimal_intervals needs a fit with n_bootstrap > 0; got samples=None")
        C = V.float_array("C", C, positive=True, ndim=None)
        s = self.samples[np.all(np.isfinite(self.samples), axis=1)]
        n, d = _compute_optimal(C[..., None] / flops_per_param_token, s[:, 1], s[:, 2], s[:, 3], s[:, 4])
        lo, hi = 50 * (1 - self.ci), 50 * (1 + self.ci)
        return {"N_opt": (np.percentile(n, lo, axis=-1), np.percentile(n, hi, axis=-1)),
                "D_opt": (np.percentile(d, lo, axis=-1), np.percentile(d, hi, axis=-1))}

    def to_dict(self) -> dict:
        out = {"law": "chinchilla", **self.params, "loss": self.loss, "n_points": self.n_points,
               "n_starts": self.n_starts, "n_converged": self.n_converged, "n_at_best": self.n_at_best,
               "scan_loss": self.scan_loss,
               "delta": self.delta,
               "compute_optimal_exponents": {"N": self.beta / (self.alpha + self.beta),
                                             "D": self.alpha / (self.alpha + self.beta)}}
        if self.intervals is not None:
            out["ci"] = self.ci
            out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
            out["n_bootstrap"] = int(self.samples.shape[0]) if self.samples is not None else None
        return out


def _compute_optimal(c_over_k, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    return G * c_over_k ** (beta / (alpha + beta)), c_over_k ** (alpha / (alpha + beta)) / G


def fit_chinchilla(N, D, L, *, delta: float = DEFAULT_DELTA, starts: np.ndarray | None = None,
                   n_bootstrap: int = 0, ci: float = 0.95, seed: int = 0, max_iter: int = 1000,
                   scan_dtype: str = "float32") -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (approach 3 of Hoffmann et al. 2022).

    N: parameters, D: training tokens, L: loss (1-D, positive, finite, equal length, >= 5 points).
    starts: rows (a, b, e, alpha, beta) in log space; default the published 4,500-point grid.
    n_bootstrap > 0 adds percentile intervals at level `ci` (each resample refit from the best fit).
    scan_dtype: precision of the multi-start pass ("float32": about 7x cheaper exp/log on CPU, or
    "float64"); the best starts are always re-scored and polished in float64, and every reported
    number (parameters, loss, bootstrap) comes from float64.
    """
    N = V.float_array("N", N, positive=True)
    D = V.float_array("D", D, positive=True)
    L = V.float_array("L", L, positive=True)
    n = V.same_length(N=N, D=D, L=L)
    V.enough_points(n, 5, "fit_chinchilla")
    delta = V.positive_number("delta", delta)
    max_iter = V.positive_int("max_iter", max_iter)
    n_bootstrap = V.positive_int("n_bootstrap", n_bootstrap, allow_zero=True)
    ci = V.probability("ci", ci)  # checked with or without a bootstrap (ci=95 is a common slip for 0.95)
    x0 = chinchilla_start_grid() if starts is None else V.float_array("starts", starts, ndim=2)
    if x0.shape[1] != 5:
        raise ValueError(f"starts has shape {x0.shape}; expected [S, 5] rows (a, b, e, alpha, beta)")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)

    if scan_dtype not in ("float32", "float64"):
        raise ValueError(f"scan_dtype={scan_dtype!r}; expected 'float32' or 'float64'")
    scan, polish = _run_starts(x0, logN, logD, logL, delta, max_iter, scan_dtype=scan_dtype)
    f_scan = np.where(np.isfinite(scan.f), scan.f, np.inf)
    f_pol = np.where(np.isfinite(polish.f), polish.f, np.inf)
    i = int(np.argmin(f_pol))
    if not np.isfinite(f_pol[i]):
        raise ValueError("fit_chinchilla: no start reached a finite objective; check N, D, L")
    best, best_f = polish.x[i], float(f_pol[i])
    E, A, B, alpha, beta = (float(v) for v in _natural(best))
    intervals = samples = None
    if n_bootstrap:
        w = resample_weights(n, n_bootstrap, seed)
        boot = _run_weighted(np.broadcast_to(best, (n_bootstrap, 5)), logN, logD, logL, w, delta, max_iter)
        samples = _natural(np.where(np.isfinite(boot.f)[:, None], boot.x, np.nan))
        intervals = percentile_intervals(PARAM_NAMES, samples, ci)
    return ChinchillaFit(E=E, A=A, B=B, alpha=alpha, beta=beta, loss=best_f, n_points=n, n_starts=len(x0),
                         n_converged=int(scan.converged.sum()), n_at_best=int((f_scan <= best_f + 1e-9).sum()),
                         scan_loss=float(f_scan.min()),
                         delta=delta, intervals=intervals, ci=ci if n_bootstrap else None, samples=samples)
