"""pass@k: the unbiased estimator of Chen et al. (2021) from n samples of which c are correct.

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

The product form avoids huge binomials; it is evaluated as -expm1(sum log1p(-k/i)) so that tiny
pass rates keep their relative precision. k > n is an error: the estimator is undefined there
(a widely copied implementation returns 1.0 whenever n - c < k, including k > n).
"""

from __future__ import annotations

import numpy as np


def _int_array(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}={value!r} must be an integer or an array of integers")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name}={value!r} must hold whole numbers")
        arr = arr.astype(np.int64)
    return arr.astype(np.int64)


def pass_at_k(n, c, k) -> np.ndarray | float:
    """Unbiased pass@k for n samples with c correct (broadcasting over arrays).

    Requires integers 1 <= k <= n and 0 <= c <= n. Returns a float for scalar inputs, else an array.
    """
    n_, c_, k_ = _int_array("n", n), _int_array("c", c), _int_array("k", k)
    try:
        n_, c_, k_ = np.broadcast_arrays(n_, c_, k_)
    except ValueError:
        raise ValueError(f"n, c, k have shapes {np.shape(n)}, {np.shape(c)}, {np.shape(k)}; "
                         "expected shapes that broadcast together") from None
    for name, bad, expect in (("n", n_ < 1, ">= 1"), ("c", (c_ < 0) | (c_ > n_), "between 0 and n"),
                              ("k", k_ < 1, ">= 1"), ("k", k_ > n_, "<= n (pass@k is undefined for k > n)")):
        if bad.any():
            i = np.unravel_index(np.flatnonzero(bad)[0], bad.shape) if bad.ndim else ()
            raise ValueError(f"{name}={int((n_, c_, k_)[('n', 'c', 'k').index(name)][i])} "
                             f"(n={int(n_[i])}, c={int(c_[i])}, k={int(k_[i])}) must be {expect}")
    out = np.ones(n_.shape, dtype=np.float64)
    live = (n_ - c_) >= k_  # otherwise every k-subset contains a correct sample: pass@k = 1
    if live.any():
        out[live] = 0.0 - np.expm1(_log_miss(n_[live], c_[live], k_[live]))
    return float(out) if out.ndim == 0 else out


_MAX_FACTORS = 4096  # above this many factors per row, the log-gamma closed form


def _log_miss(n, c, k):
    """log C(n - c, k) / C(n, k) for n - c >= k, without materialising anything of size n.

    As a product of min(c, k) factors: prod_{i=n-c+1}^{n} (1 - k/i) = prod_{j=0}^{k-1} (1 - c/(n-j));
    beyond _MAX_FACTORS factors, log-gamma differences (absolute error ~1e-16 n log n in the log).
    """
    from scipy.special import gammaln

    m = np.minimum(c, k)
    res = np.empty(n.shape, dtype=np.float64)
    few = m <= _MAX_FACTORS
    if few.any():
        nf, cf, kf, mf = n[few], c[few], k[few], m[few]
        j = np.arange(int(mf.max()))[None, :]
        mask = j < mf[:, None]
        c_small = (cf <= kf)[:, None]
        # c <= k: factors 1 - k / (n - c + 1 + j); else: 1 - c / (n - j)
        num = np.where(c_small, kf[:, None], cf[:, None]).astype(np.float64)
        den = np.where(c_small, (nf - cf + 1)[:, None] + j, nf[:, None] - j).astype(np.float64)
        res[few] = np.where(mask, np.log1p(-num / np.where(mask, den, num + 1)), 0.0).sum(-1)
    if (~few).any():
        nb, cb, kb = (a[~few].astype(np.float64) for a in (n, c, k))
        res[~few] = gammaln(nb - cb + 1) + gammaln(nb - kb + 1) - gammaln(nb - cb - kb + 1) - gammaln(nb + 1)
    return res


def mean_pass_at_k(n, c, ks) -> np.ndarray:
    """Coverage curve: pass@k averaged over problems (n[i], c[i]) for every k in ks; shape [len(ks)]."""
    n = np.atleast_1d(n)
    c = np.atleast_1d(c)
    ks = np.atleast_1d(ks)
    return np.asarray(pass_at_k(n[None, :], c[None, :], ks[:, None])).mean(-1)
