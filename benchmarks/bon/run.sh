#!/usr/bin/env bash
# Best-of-N benchmark on the CPU: the policy by `ttc train` on an arithmetic corpus, then the PRM and ORM
# (initialised from the policy, in parallel), then `ttc best-of-n` per level, merged; then ship to checkpoints/.
# Weights and logs go to $MODELS (not the repo); results, curves and plots to benchmarks/results/bon/.
# Usage: benchmarks/bon/run.sh [MODELS_DIR]   (the recorded run and its time caps: benchmarks/results/bon/README.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODELS=${1:-/work/coord/bon_models2}
PY=${PY:-.venv/bin/python}
TTC=${TTC:-.venv/bin/ttc}
PROBLEMS=${PROBLEMS:-200}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
mkdir -p "$MODELS/logs"
$PY benchmarks/bon/make_corpus.py --out "$MODELS/arith.jsonl" --docs 300000
$TTC data prepare --source "$MODELS/arith.jsonl" --out "$MODELS/arith_data" --val-fraction 0.01
# SIGINT at the time cap: ttc train saves a checkpoint and stops (re-running the command resumes)
timeout -s INT 50m nice -n 10 $TTC train --config tiny-transformer --workdir "$MODELS/policy_run" --steps 1200 \
  --no-progress --set d_model=128 ffn_dim=512 n_layers=4 max_seq_len=128 data_dir="$MODELS/arith_data" seq_len=128 \
  batch_size=32 lr=2e-3 warmup_steps=100 eval_every=200 eval_batches=4 save_every=100 log_every=20 \
  > "$MODELS/logs/policy.log" 2>&1 || true
$PY benchmarks/bon/ship.py --workdir "$MODELS/policy_run" --policy-only --out "$MODELS"   # -> $MODELS/policy
# PRM and ORM: ttc train --objective prm|orm from the policy (train_prm.py samples the step data first)
nice -n 10 $PY benchmarks/bon/train_prm.py --policy "$MODELS/policy" --workdir "$MODELS/prm_run" --kind prm \
  --data "$MODELS/prm_data" --steps 700 --minutes 15 > "$MODELS/logs/prm.log" 2>&1
nice -n 10 $PY benchmarks/bon/train_prm.py --policy "$MODELS/policy" --workdir "$MODELS/orm_run" --kind orm \
  --data "$MODELS/prm_data" --steps 500 --minutes 13 --seed 1 > "$MODELS/logs/orm.log" 2>&1
$PY -m ttc_jax.cli export "$MODELS/prm_run" "$MODELS/prm" --overwrite
$PY -m ttc_jax.cli export "$MODELS/orm_run" "$MODELS/orm" --overwrite
# one process per difficulty level (the shared CPU gives each process a slice), then merge
for lv in easy medium hard; do
  nice -n 10 $PY -m ttc_jax.cli best-of-n --policy "$MODELS/policy" --prm "$MODELS/prm" --orm "$MODELS/orm" \
    --levels $lv --problems $PROBLEMS --search-problems 50 --n 1,2,4,8,16,32,64 --search-n 4,16 --width 4 \
    --no-progress --out "$MODELS/eval_$lv" > "$MODELS/logs/eval_$lv.log" 2>&1 &
done
wait
$PY benchmarks/bon/merge.py --out benchmarks/results/bon "$MODELS/eval_easy" "$MODELS/eval_medium" "$MODELS/eval_hard"
$PY benchmarks/bon/ship.py --workdir "$MODELS/policy_run" --prm "$MODELS/prm_run" --orm "$MODELS/orm_run" --out checkpoints
