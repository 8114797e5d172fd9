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
        nl, cl, kl = n_[live], c_[live], k_[live]
        j = np.arange(int(cl.max()) if cl.size else 0)
        i = (nl - cl + 1)[:, None] + j[None, :]  # the c factors i = n-c+1 .. n
        mask = j[None, :] < cl[:, None]
        terms = np.where(mask, np.log1p(-kl[:, None] / np.where(mask, i, kl[:, None] + 1)), 0.0)
        out[live] = 0.0 - np.expm1(terms.sum(-1))
    return float(out) if out.ndim == 0 else out


def mean_pass_at_k(n, c, ks) -> np.ndarray:
    """Coverage curve: pass@k averaged over problems (n[i], c[i]) for every k in ks; shape [len(ks)]."""
    n = np.atleast_1d(n)
    c = np.atleast_1d(c)
    ks = np.atleast_1d(ks)
    return np.asarray(pass_at_k(n[None, :], c[None, :], ks[:, None])).mean(-1)
