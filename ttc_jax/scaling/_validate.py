"""Argument checks shared by the scaling modules; every error names the argument, its value and what is expected."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def _show(value: Any) -> str:
    arr = np.asarray(value)
    if arr.ndim == 0 or arr.size <= 6:
        return repr(value if arr.ndim == 0 else arr.tolist())
    return f"array of shape {arr.shape}"


def float_array(name: str, value: Any, *, positive: bool = False, ndim: int | None = 1) -> np.ndarray:
    """`value` as a float64 array of finite numbers (strictly positive if asked)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={_show(value)} must be numeric") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} has shape {arr.shape}; expected a {ndim}-D array")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; expected at least one value")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = np.flatnonzero(bad.ravel())[0]
        raise ValueError(f"{name} contains non-finite value {float(arr.ravel()[i])!r} at index {i}; "
                         "expected finite numbers")
    if positive and (arr <= 0).any():
        i = np.flatnonzero((arr <= 0).ravel())[0]
        raise ValueError(f"{name} contains {float(arr.ravel()[i])!r} at index {i}; expected values > 0")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"mismatched lengths {lengths}; expected arrays of equal length")
    return next(iter(lengths.values()))


def enough_points(n: int, n_params: int, what: str) -> None:
    if n < n_params:
        raise ValueError(f"{what} has {n} data points but {n_params} parameters; expected at least {n_params} points")


def positive_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r}; expected a number {'>= 0' if allow_zero else '> 0'}")
    return float(value)


def positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be an int")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r}; expected an int {'>= 0' if allow_zero else '>= 1'}")
    return int(value)


def probability(name: str, value: Any) -> float:
    v = positive_number(name, value, allow_zero=True)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name}={value!r}; expected a number strictly between 0 and 1")
    return v
