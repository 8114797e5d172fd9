"""Compute-optimal scaling: FLOP accounting, scaling-law fits, pass@k and a test-time budget planner.

Modules: `flops` (parameters and FLOPs of a model config), `fits` (power laws), `chinchilla`
(approach-3 fit of L(N, D)), `passk`, `curves` (accuracy-curve JSON), `planner`, `monitoring`,
`plots` (matplotlib figures; import it explicitly), `io` (CSV/JSON), `cli` (`ttc scale`).
"""

from ttc_jax.scaling.chinchilla import ChinchillaFit, chinchilla_start_grid, fit_chinchilla
from ttc_jax.scaling.curves import Curve, CurveSet, LargerModel, Strategy, curves_from_dict, curves_to_dict, \
    synthetic_curves
from ttc_jax.scaling.fits import ExpPowerLawFit, PowerLawFit, fit_exp_power_law, fit_power_law
from ttc_jax.scaling.flops import AffineCost, Flops, GenerationFlops, ParamCount, TrainingFlops, best_of_n_cost, \
    decode_flops, forward_flops, forward_flops_per_token, generation_flops, param_count, prm_flops, training_flops
from ttc_jax.scaling.io import load_chinchilla_csv
from ttc_jax.scaling.monitoring import cost_per_correct, scaling_exponents
from ttc_jax.scaling.passk import mean_pass_at_k, pass_at_k
from ttc_jax.scaling.planner import HoldoutReport, MatchedComparison, Plan, compare_with_larger_model, \
    flops_matched_multiplier, holdout_validation, plan_budget, plan_frontier

__all__ = [
    "AffineCost", "ChinchillaFit", "Curve", "CurveSet", "ExpPowerLawFit", "Flops", "GenerationFlops",
    "HoldoutReport", "LargerModel", "MatchedComparison", "ParamCount", "Plan", "PowerLawFit", "Strategy",
    "TrainingFlops", "best_of_n_cost", "chinchilla_start_grid", "compare_with_larger_model", "cost_per_correct",
    "curves_from_dict", "curves_to_dict", "decode_flops", "fit_chinchilla", "fit_exp_power_law", "fit_power_law",
    "flops_matched_multiplier", "forward_flops", "forward_flops_per_token", "generation_flops",
    "holdout_validation", "load_chinchilla_csv", "mean_pass_at_k", "param_count", "pass_at_k", "plan_budget",
    "plan_frontier", "prm_flops", "scaling_exponents", "synthetic_curves", "training_flops",
]
