"""Figures for fits, plans and monitoring. Each function returns a matplotlib Figure (no pyplot state);
saving is the caller's business (`fig.savefig(path)`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ttc_jax.scaling.chinchilla import ChinchillaFit
from ttc_jax.scaling.curves import CurveSet
from ttc_jax.scaling.fits import ExpPowerLawFit, PowerLawFit
from ttc_jax.scaling.planner import HoldoutReport, Plan, uniform_strategy_curve


def plot_chinchilla(fit: ChinchillaFit, N, D, L, *, flops_per_param_token: float = 6.0) -> Figure:
    """Left: loss against compute coloured by model size, with the fitted compute-optimal frontier.
    Right: fitted N_opt(C) and D_opt(C) (with bootstrap bands when the fit has them)."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    C = flops_per_param_token * N * D
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    sc = ax.scatter(C, L, c=np.log10(N), cmap="viridis", s=14, label="data")
    fig.colorbar(sc, ax=ax, label="log10 parameters")
    cg = np.geomspace(C.min(), C.max() * 10, 100)
    n_opt, d_opt = fit.compute_optimal(cg, flops_per_param_token)
    ax.plot(cg, fit.predict(n_opt, d_opt), "r-", label="fit at N_opt(C)")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="loss",
           title=f"L = {fit.E:.3g} + {fit.A:.3g}/N^{fit.alpha:.3f} + {fit.B:.3g}/D^{fit.beta:.3f}")
    ax.legend()
    cg2 = np.geomspace(1e18, 1e26, 60)
    n_opt, d_opt = fit.compute_optimal(cg2, flops_per_param_token)
    ax2.plot(cg2, n_opt, label="N_opt (parameters)")
    ax2.plot(cg2, d_opt, label="D_opt (tokens)")
    if fit.samples is not None:
        iv = fit.compute_optimal_intervals(cg2, flops_per_param_token)
        ax2.fill_between(cg2, *iv["N_opt"], alpha=0.25)
        ax2.fill_between(cg2, *iv["D_opt"], alpha=0.25)
    ax2.set(xscale="log", yscale="log", xlabel="training FLOPs C", title="compute-optimal allocation")
    ax2.legend()
    return fig


def plot_power_law(fit: PowerLawFit | ExpPowerLawFit, x, y, *, xlabel: str = "x", ylabel: str = "y") -> Figure:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    ax.scatter(x, y, s=16, label="data")
    xg = np.geomspace(x.min(), x.max(), 200)
    ax.plot(xg, fit.predict(xg), "r-", label="fit")
    title = ", ".join(f"{k}={v:.3g}" for k, v in fit.params.items())
    ax.set(xscale="log", yscale="linear" if isinstance(fit, ExpPowerLawFit) else "log",
           xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    return fig


def plot_plans(curves: CurveSet, plans: Sequence[Plan], *, comparison: Mapping | None = None) -> Figure:
    """Expected accuracy against FLOPs per query: the planner's adaptive frontier vs. each strategy
    with the same n in every bin; optionally the larger model's FLOPs-matched point."""
    fig = Figure(figsize=(6.5, 4.4), layout="constrained")
    ax = fig.subplots()
    for name in curves.strategies:
        _, cost, acc = uniform_strategy_curve(curves, name)
        ax.plot(cost, acc, "o--", ms=3, label=f"{name} (uniform n)")
    ax.plot([p.cost for p in plans], [p.accuracy for p in plans], "k.-", label="planner (per-bin)")
    ub = [p.upper_bound for p in plans]
    ax.plot([p.budget for p in plans], ub, ":", color="gray", label="LP upper bound")
    if comparison is not None:
        ax.axvline(comparison["budget"], color="r", lw=0.8)
        ax.axhline(comparison["large_accuracy"], color="r", lw=0.8, ls="--",
                   label=f"{comparison['size_ratio']:g}x larger model (FLOPs-matched budget)")
    ax.set(xscale="log", xlabel="FLOPs per query", ylabel="expected accuracy", title="test-time compute allocation")
    ax.legend(fontsize=8)
    return fig


def plot_cost_per_correct(cpc: Mapping[str, Mapping[str, list]]) -> Figure:
    """FLOPs per correct output against n (output of `monitoring.cost_per_correct`)."""
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for name, d in cpc.items():
        ax.plot(d["n"], d["cost_per_correct"], "o-", ms=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="samples n", ylabel="FLOPs per correct output",
           title="cost per correct output")
    ax.legend()
    return fig


def plot_scaling_exponents(fits: Mapping[str, PowerLawFit]) -> Figure:
    """The fitted exponent b of error = a C^b per strategy, with its bootstrap interval."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    names = list(fits)
    b = np.array([fits[k].b for k in names])
    lo = np.array([fits[k].intervals["b"][0] if fits[k].intervals else fits[k].b for k in names])
    hi = np.array([fits[k].intervals["b"][1] if fits[k].intervals else fits[k].b for k in names])
    ax.errorbar(b, np.arange(len(names)), xerr=[b - lo, hi - b], fmt="o", capsize=4)
    ax.set_yticks(np.arange(len(names)), names)
    ax.axvline(0, color="gray", lw=0.8)
    ax.set(xlabel="scaling exponent b (error ~ FLOPs^b)", title="measured scaling exponent (95% CI)")
    return fig


def plot_holdout(report: HoldoutReport) -> Figure:
    """Held-out check: predicted vs measured accuracy on the larger half of each curve, and of the plans."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    for r in report.curves:
        ax.plot(r["measured"], r["predicted"], "o", ms=4, label=f"{r['strategy']}/{r['bin']}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="measured accuracy (held-out n)", ylabel="predicted from smaller half",
           title=f"{report.form}: MAE {report.mean_abs_error:.3f}")
    ax.legend(fontsize=6)
    if report.plans:
        bud = [p["budget"] for p in report.plans]
        ax2.plot(bud, [p["predicted"] for p in report.plans], "o-", label="predicted (fitted curves)")
        ax2.plot(bud, [p["realised"] for p in report.plans], "s-", label="realised (measured)")
        ax2.plot(bud, [p["optimal"] for p in report.plans], "k:", label="optimal on measured curves")
        ax2.set(xscale="log", xlabel="FLOPs per query (held-out budgets)", ylabel="expected accuracy",
                title="plans at held-out budgets")
        ax2.legend(fontsize=8)
    return fig
