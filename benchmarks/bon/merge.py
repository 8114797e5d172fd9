"""Merge `ttc best-of-n` output folders (run in parallel: one per level, and e.g. one with only beam search /
DVTS on fewer problems) into one results.json, curves.json and plots; a later folder adds the strategies a
level does not have yet, and an N a strategy does not have yet.

  .venv/bin/python benchmarks/bon/merge.py --out benchmarks/results/bon /tmp/bon_easy /tmp/bon_medium /tmp/bon_hard
"""

import argparse
import json
import os

from ttc_jax.search import checkpoint, plots
from ttc_jax.search.cli import curves_dict

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--note", default="")
p.add_argument("dirs", nargs="+")
a = p.parse_args()

merged = None
for d in a.dirs:
    r = json.load(open(os.path.join(d, "results.json")))
    if merged is None:
        merged = {k: v for k, v in r.items() if k != "levels"}
        merged["levels"], merged["wall_seconds_per_level"] = {}, {}
    for lv, d in r["levels"].items():
        if lv in merged["levels"]:  # a second run on this level (e.g. beam search / DVTS only): add its strategies
            old = merged["levels"][lv]
            for k, by_n in d["accuracy"].items():  # a strategy / N the level does not have yet
                have = old["accuracy"].setdefault(k, {})
                have.update({n: v for n, v in by_n.items() if n not in have})
                old["accuracy"][k] = dict(sorted(have.items(), key=lambda kv: int(kv[0])))
            old["num_search_problems"] = max(old["num_search_problems"], d["num_search_problems"])
            old["timing"].update({k: v for k, v in d["timing"].items() if k not in old["timing"]})
            merged["wall_seconds_per_level"][lv] += r["wall_seconds"] / len(r["levels"])
        else:
            merged["levels"][lv] = d
            merged["wall_seconds_per_level"][lv] = r["wall_seconds"] / len(r["levels"])
    merged["strategies"] = sorted(set(merged["strategies"]) | set(r["strategies"]))
    if {"beam_search", "dvts"} & set(r["strategies"]):  # N of the search runs, not a pool run's default
        searched = merged.setdefault("_searched", set())
        searched.update(r["search_ns"])
merged["search_ns"] = sorted(merged.pop("_searched", merged["search_ns"]))
merged.pop("wall_seconds", None)
merged["note"] = a.note
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump(merged, f, indent=1)


def cfg(path):
    """The ModelConfig of an .npz checkpoint or a checkpoint folder / shipped name (None for no path)."""
    if not path:
        return None
    if os.path.exists(path + ".json"):
        return checkpoint._config(checkpoint.load_info(path))
    from ttc_jax.checkpoints.store import read_config, resolve
    return read_config(resolve(path))[0]


curves = curves_dict(merged, cfg(merged["policy"]), cfg(merged.get("prm")), cfg(merged.get("orm")))
with open(os.path.join(a.out, "curves.json"), "w") as f:
    json.dump(curves, f, indent=1)
plots.write_all(merged, a.out)
for lv, d in merged["levels"].items():
    print(lv, {k: v[max(v, key=int)] for k, v in d["accuracy"].items()})
