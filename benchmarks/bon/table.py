"""Markdown tables of a best-of-N results.json (accuracy by strategy at selected N; PRM / ORM diagnostics).

  .venv/bin/python benchmarks/bon/table.py benchmarks/results/bon/results.json
"""

import json
import sys

r = json.load(open(sys.argv[1]))
ns = sorted({int(n) for d in r["levels"].values() for k, v in d["accuracy"].items() if k not in ("beam_search", "dvts") for n in v})
pool = ["majority", "weighted_best_of_n_prm", "best_of_n_prm_last", "best_of_n_prm_min", "best_of_n_prm_prod",
        "best_of_n_orm", "oracle"]
short = {"majority": "majority", "weighted_best_of_n_prm": "weighted BoN (PRM)", "best_of_n_prm_last": "BoN PRM last",
         "best_of_n_prm_min": "BoN PRM min", "best_of_n_prm_prod": "BoN PRM prod", "best_of_n_orm": "BoN ORM",
         "oracle": "oracle pass@N"}
for lv, d in r["levels"].items():
    acc = d["accuracy"]
    print(f"\n**{lv}** ({d['num_problems']} problems; beam search / DVTS on {d['num_search_problems']}; "
          f"single-sample accuracy {d['single_sample_accuracy']:.3f})\n")
    print("| strategy | " + " | ".join(f"N={n}" for n in ns) + " |")
    print("|---|" + "---|" * len(ns))
    for s in pool:
        if s in acc:
            print(f"| {short[s]} | " + " | ".join(f"{acc[s].get(str(n), float('nan')):.3f}" for n in ns) + " |")
    for s in ("beam_search", "dvts"):
        if s in acc:
            print(f"| {s.replace('_', ' ')} (M={r['width']}) | " + " | ".join(
                f"{acc[s][str(n)]:.3f}" if str(n) in acc[s] else "" for n in ns) + " |")
print("\n| level | step AUROC (PRM) | AUROC PRM last / min / prod | AUROC ORM | selection PRM last (chance) | "
      "selection ORM | best-minus-mean (last) | step ECE | distinct answers @N_max |")
print("|---|---|---|---|---|---|---|---|---|")
f = lambda v: "n/a" if v is None else f"{v:.3f}"
for lv, d in r["levels"].items():
    g = d["diagnostics"]
    sel = g.get("selection_last", {})
    so = g.get("selection_orm", {})
    print(f"| {lv} | {f(g.get('step_auroc'))} | {f(g.get('auroc_last'))} / {f(g.get('auroc_min'))} / "
          f"{f(g.get('auroc_prod'))} | {f(g.get('auroc_orm'))} | {f(sel.get('accuracy'))} ({f(sel.get('chance'))}) | "
          f"{f(so.get('accuracy'))} | {f(g.get('best_minus_mean_last'))} | "
          f"{f((g.get('calibration') or {}).get('ece'))} | {g['distinct_answers']:.1f} |")
