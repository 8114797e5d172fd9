"""File input and output for the scaling tools (CSV, JSON); the fitting and planning modules stay pure."""

from __future__ import annotations

import csv
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ttc_jax.scaling import _validate as V

CHINCHILLA_CSV = "chinchilla_svg_extracted.csv"


def chinchilla_csv_path() -> Path:
    """Path of the vendored Epoch AI data (see ttc_jax/scaling/data/README.md)."""
    return Path(str(resources.files("ttc_jax.scaling").joinpath("data").joinpath(CHINCHILLA_CSV)))


def read_csv_columns(path: str | Path) -> dict[str, list[str]]:
    """Columns of a CSV file with a header row, as lists of strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file path={str(path)!r} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ValueError(f"CSV file path={str(path)!r} has no header row; expected named columns")
        cols: dict[str, list[str]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in reader.fieldnames:
                cols[name].append(row[name])
    return cols


def numeric_column(cols: dict[str, list[str]], name: str, *, source: str = "CSV") -> np.ndarray:
    """One column as float64; empty cells become NaN (the fits then reject them by name)."""
    if name not in cols:
        raise ValueError(f"column={name!r} not in {source}; expected one of {sorted(cols)}")
    out = []
    for i, cell in enumerate(cols[name]):
        cell = cell.strip()
        try:
            out.append(float(cell) if cell else math.nan)
        except ValueError:
            raise ValueError(f"column {name!r} row {i} has value {cell!r}; expected a number") from None
    return np.asarray(out, dtype=np.float64)


def load_chinchilla_csv(path: str | Path | None = None, *, drop_highest: int = 5,
                        n_col: str = "Model Size", flop_col: str = "Training FLOP", loss_col: str = "loss",
                        flops_per_param_token: float = 6.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, L) from Epoch AI's CSV layout (default: the vendored copy), with D = C / (6 N).

    drop_highest: drop this many points with the highest loss, as Epoch AI did (5).
    """
    cols = read_csv_columns(chinchilla_csv_path() if path is None else path)
    N = numeric_column(cols, n_col)
    C = numeric_column(cols, flop_col)
    L = numeric_column(cols, loss_col)
    drop_highest = V.positive_int("drop_highest", drop_highest, allow_zero=True)
    if drop_highest >= len(L):
        raise ValueError(f"drop_highest={drop_highest} leaves no points of {len(L)}; expected fewer than {len(L)}")
    V.float_array(n_col, N, positive=True)
    V.float_array(flop_col, C, positive=True)
    V.float_array(loss_col, L, positive=True)
    keep = np.sort(np.argsort(L, kind="stable")[: len(L) - drop_highest])
    N, C, L = N[keep], C[keep], L[keep]
    return N, C / (flops_per_param_token * N), L


def jsonable(obj: Any) -> Any:
    """Plain JSON types from dicts, lists, numpy scalars and arrays; NaN and inf become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` (dicts, lists, numpy scalars/arrays; NaN/inf become null) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file path={str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"JSON file path={str(path)!r} is not valid JSON: {err}") from None
