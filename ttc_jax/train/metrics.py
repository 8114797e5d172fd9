"""Run visibility: DIR/metrics.jsonl, TensorBoard events in DIR/tb, a tqdm progress bar, MFU,
and validation loss by token position (JSON + PNG)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ttc_jax.scaling.flops import training_flops


def train_flops_per_token(model_cfg, seq_len: int) -> float:
    """Training FLOPs (forward + backward + remat recompute) per token at context seq_len."""
    return training_flops(model_cfg, seq_len).per_token


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    return tokens_per_s * flops_per_token / peak_flops


def _scalar(v: Any) -> float | int:
    v = np.asarray(v)
    return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


def read_jsonl(path: str) -> list[dict]:
    """The JSON rows of a .jsonl file ([] when it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_metrics(workdir: str) -> list[dict]:
    """Every row a run logged to WORKDIR/metrics.jsonl, in order."""
    return read_jsonl(os.path.join(workdir, "metrics.jsonl"))

class MetricsLogger:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._f = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=30)

    def write(self, step: int, metrics: dict) -> dict:
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def progress_bar(total: int, initial: int, enabled: bool = True):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                desc="train")


def loss_by_position(loss_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean loss per position (NaN where no target was scored)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, loss_sum / np.maximum(count, 1), np.nan)


def smooth_by_position(curve: np.ndarray, n_bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(bin centre positions, mean loss per bin): the TTT paper's loss-vs-context curve, de-noised."""
    T = len(curve)
    edges = np.unique(np.linspace(0, T, min(n_bins, T) + 1).astype(int))
    centres, means = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = curve[a:b]
        if np.isfinite(seg).any():
            centres.append((a + b - 1) / 2)
            means.append(float(np.nanmean(seg)))
    return np.asarray(centres), np.asarray(means)


def save_loss_by_position(path_stem: str, curves: dict[str, np.ndarray], title: str = "") -> None:
    """path_stem.json ({name: per-position loss}) and path_stem.png (binned curves, log-x)."""
    with open(path_stem + ".json", "w") as f:
        json.dump({k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in curves.items()}, f)
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (e.g. a notebook's) alone
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        x, y = smooth_by_position(np.asarray(curve, float))
        ax.plot(x + 1, y, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("token position in context")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title or "validation loss by token position")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_stem + ".png", dpi=110)
