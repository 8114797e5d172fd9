"""`ttc scale fit | plan`: fit scaling laws from CSV, plan test-time budgets from accuracy-curve JSON.

`ttc_jax.cli` wires this in with `register(subparsers)`; every sub-command sets `func`, a callable
taking the parsed args and returning an exit code (0 ok, 2 bad input).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

LAWS = ("chinchilla", "power", "power-offset", "exp-power")


def register(subparsers) -> argparse.ArgumentParser:
    """Add `scale` (with `fit` and `plan`) to an argparse subparsers object."""
    scale = subparsers.add_parser("scale", help="scaling-law fits and test-time compute planning")
    sub = scale.add_subparsers(dest="scale_command", metavar="{fit,plan}")
    sub.required = True

    fit = sub.add_parser("fit", help="fit a scaling law to CSV data; write JSON (and a plot)")
    fit.add_argument("--law", choices=LAWS, default="chinchilla")
    fit.add_argument("--data", type=Path, default=None,
                     help="CSV with a header row (chinchilla default: the vendored Epoch AI data)")
    fit.add_argument("--x", help="x column (power, power-offset, exp-power: compute or k)")
    fit.add_argument("--y", help="y column (power laws: loss/error; exp-power: coverage in (0, 1))")
    fit.add_argument("--n-col", default="Model Size", help="chinchilla: parameters column")
    fit.add_argument("--d-col", default=None, help="chinchilla: tokens column (else D = C / (6 N))")
    fit.add_argument("--flop-col", default="Training FLOP", help="chinchilla: training FLOPs column")
    fit.add_argument("--loss-col", default="loss", help="chinchilla: loss column")
    fit.add_argument("--drop-highest", type=int, default=5, help="chinchilla: drop this many highest-loss points")
    fit.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for intervals (0: none)")
    fit.add_argument("--ci", type=float, default=0.95)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", type=Path, default=None, help="JSON output (default: stdout)")
    fit.add_argument("--plot", type=Path, default=None, help="PNG output")
    fit.set_defaults(func=run_fit)

    plan = sub.add_parser("plan", help="allocate a FLOP budget over strategies and difficulty bins")
    plan.add_argument("--curves", type=Path, default=None,
                      help="accuracy-curve JSON (shape: ttc_jax.scaling.curves); default: synthetic demo curves")
    plan.add_argument("--budget", type=float, nargs="*", default=None,
                      help="FLOPs per query (default: a sweep over the feasible range)")
    plan.add_argument("--method", choices=("greedy", "mixed", "exact"), default="greedy")
    plan.add_argument("--inference-ratio", type=float, default=None,
                      help="R = inference tokens / pretraining tokens, for the FLOPs-matched larger-model comparison")
    plan.add_argument("--size-ratio", type=float, default=None, help="M, the larger model's size ratio "
                      "(default: larger_model.size_ratio from the JSON)")
    plan.add_argument("--holdout", choices=("exp_power", "power_offset", "power", "none"), default="exp_power",
                      help="curve form for the held-out-budget validation")
    plan.add_argument("--bootstrap", type=int, default=1000, help="resamples for the scaling-exponent interval")
    plan.add_argument("--out", type=Path, default=None, help="JSON output (default: stdout)")
    plan.add_argument("--plot-dir", type=Path, default=None, help="folder for PNG figures")
    plan.set_defaults(func=run_plan)
    return scale


def _fail(msg: str) -> int:
    print(f"ttc scale: error: {msg}", file=sys.stderr)
    return 2


def _emit(obj, out: Path | None) -> None:
    from ttc_jax.scaling.io import jsonable, write_json

    if out is None:
        import json

        print(json.dumps(jsonable(obj), indent=2))
    else:
        write_json(out, obj)
        print(f"wrote {out}", file=sys.stderr)


def run_fit(args) -> int:
    from ttc_jax.scaling import fits, io
    from ttc_jax.scaling.chinchilla import fit_chinchilla

    try:
        t0 = time.perf_counter()
        if args.law == "chinchilla":
            if args.d_col is None:
                N, D, L = io.load_chinchilla_csv(args.data, drop_highest=args.drop_highest, n_col=args.n_col,
                                                 flop_col=args.flop_col, loss_col=args.loss_col)
            else:
                if args.data is None:
                    return _fail("--d-col needs --data")
                cols = io.read_csv_columns(args.data)
                N, D, L = (io.numeric_column(cols, c) for c in (args.n_col, args.d_col, args.loss_col))
                if args.drop_highest:
                    keep = np.sort(np.argsort(L, kind="stable")[: max(len(L) - args.drop_highest, 0)])
                    N, D, L = N[keep], D[keep], L[keep]
            print(f"fitting chinchilla to {len(N)} points from 4500 starts ...", file=sys.stderr)
            fit = fit_chinchilla(N, D, L, n_bootstrap=args.bootstrap, ci=args.ci, seed=args.seed)
            x = y = None
        else:
            if args.data is None or args.x is None or args.y is None:
                return _fail(f"--law {args.law} needs --data, --x and --y")
            cols = io.read_csv_columns(args.data)
            x, y = io.numeric_column(cols, args.x), io.numeric_column(cols, args.y)
            if args.law == "exp-power":
                fit = fits.fit_exp_power_law(x, y, n_bootstrap=args.bootstrap, ci=args.ci, seed=args.seed)
            else:
                fit = fits.fit_power_law(x, y, offset=args.law == "power-offset", n_bootstrap=args.bootstrap,
                                         ci=args.ci, seed=args.seed)
        result = {**fit.to_dict(), "data": str(args.data) if args.data else "vendored:chinchilla_svg_extracted.csv",
                  "seconds": time.perf_counter() - t0}
        _emit(result, args.out)
        if args.plot is not None:
            from ttc_jax.scaling import plots

            fig = (plots.plot_chinchilla(fit, N, D, L) if args.law == "chinchilla"
                   else plots.plot_power_law(fit, x, y, xlabel=args.x, ylabel=args.y))
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(args.plot, dpi=120)
            print(f"wrote {args.plot}", file=sys.stderr)
        return 0
    except (ValueError, FileNotFoundError) as err:
        return _fail(str(err))


def run_plan(args) -> int:
    from ttc_jax.scaling import io, monitoring, planner
    from ttc_jax.scaling.curves import curves_from_dict, synthetic_curves

    try:
        curves = synthetic_curves() if args.curves is None else curves_from_dict(io.read_json(args.curves))
        budgets = args.budget or None
        plans = planner.plan_frontier(curves, budgets, method=args.method)
        result = {"curves": str(args.curves) if args.curves else "synthetic",
                  "budget_range": list(planner.budget_range(curves)),
                  "plans": [p.to_dict() for p in plans]}
        comparison = None
        if args.inference_ratio is not None:
            comparison = planner.compare_with_larger_model(curves, args.inference_ratio,
                                                           size_ratio=args.size_ratio).to_dict()
            result["larger_model_comparison"] = comparison
        report = None
        if args.holdout != "none":
            print(f"held-out validation ({args.holdout}) ...", file=sys.stderr)
            report = planner.holdout_validation(curves, form=args.holdout)
            result["holdout"] = report.to_dict()
        cpc = monitoring.cost_per_correct(curves)
        exps = monitoring.scaling_exponents(curves, n_bootstrap=args.bootstrap)
        result["cost_per_correct"] = cpc
        result["scaling_exponents"] = {k: v.to_dict() for k, v in exps.items()}
        _emit(result, args.out)
        if args.plot_dir is not None:
            from ttc_jax.scaling import plots

            args.plot_dir.mkdir(parents=True, exist_ok=True)
            figs = {"plan_frontier": plots.plot_plans(curves, plans, comparison=comparison),
                    "cost_per_correct": plots.plot_cost_per_correct(cpc),
                    "scaling_exponent": plots.plot_scaling_exponents(exps)}
            if report is not None:
                figs["holdout"] = plots.plot_holdout(report)
            for name, fig in figs.items():
                fig.savefig(args.plot_dir / f"{name}.png", dpi=120)
            print(f"wrote {len(figs)} figures to {args.plot_dir}", file=sys.stderr)
        return 0
    except (ValueError, FileNotFoundError) as err:
        return _fail(str(err))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m ttc_jax.scaling.cli scale fit ...`) until `ttc` wires `register`."""
    parser = argparse.ArgumentParser(prog="ttc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
