#!/usr/bin/env bash
# Best-of-N benchmark on the CPU: train the policy, then the PRM and ORM (in parallel), then evaluate.
# Weights go to $MODELS (not the repo); results, curves and plots to benchmarks/results/bon/.
# Usage: benchmarks/bon/run.sh [MODELS_DIR]   (the recorded run: see benchmarks/results/bon/README.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODELS=${1:-/work/coord/bon_models}
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
mkdir -p "$MODELS/logs"
nice -n 10 $PY benchmarks/bon/train_policy.py --out "$MODELS/policy0" --minutes 22 --steps 1600 \
  > "$MODELS/logs/policy.log" 2>&1
# the policy trains on while the PRM and ORM learn from the 22-minute policy's samples (time on the shared CPU)
nice -n 10 $PY benchmarks/bon/train_policy.py --init "$MODELS/policy0" --out "$MODELS/policy" --minutes 12 \
  --steps 700 --batch 16 --lr 1.5e-3 --seed 1 > "$MODELS/logs/policy2.log" 2>&1 &
nice -n 10 $PY benchmarks/bon/train_prm.py --policy "$MODELS/policy0" --out "$MODELS/prm" --kind prm --labels exact \
  --minutes 12 --data "$MODELS/prm_data.jsonl" > "$MODELS/logs/prm.log" 2>&1 &
nice -n 10 $PY benchmarks/bon/train_prm.py --policy "$MODELS/policy0" --out "$MODELS/orm" --kind orm \
  --minutes 10 --seed 1 > "$MODELS/logs/orm.log" 2>&1 &
wait
# one process per difficulty level (the shared CPU gives each process a slice), then merge
for lv in easy medium hard; do
  nice -n 10 $PY -m ttc_jax.cli best-of-n --policy "$MODELS/policy" --prm "$MODELS/prm" --orm "$MODELS/orm" \
    --levels $lv --problems 50 --search-problems 16 --n 1,2,4,8,16,32,64 --search-n 4,16 --width 4 \
    --out "$MODELS/eval_$lv" > "$MODELS/logs/eval_$lv.log" 2>&1 &
done
wait
$PY benchmarks/bon/merge.py --out benchmarks/results/bon "$MODELS/eval_easy" "$MODELS/eval_medium" "$MODELS/eval_hard"
