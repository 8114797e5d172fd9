#!/usr/bin/env bash
# The recorded best-of-N evaluation of the shipped checkpoints (benchmarks/results/bon/README.md):
# pool strategies on PROBLEMS held-out problems per level with one pool of 64 samples each, then beam
# search / DVTS (width 4) on the first SEARCH_PROBLEMS of them in two waves, N = 4, 16, 64 and then
# N = 8, 32 (the searches share one random stream per run, so the waves are part of the recipe); one
# process per level (each gets a slice of the CPU), merged into benchmarks/results/bon/.
# Usage: benchmarks/bon/eval.sh [WORK_DIR]      (PROBLEMS=500 SEARCH_PROBLEMS=500 by default)
#        PHASES=search benchmarks/bon/eval.sh DIR   re-runs only the search phase into DIR (merged with DIR's pool runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/bon_eval}
PROBLEMS=${PROBLEMS:-500}
SEARCH_PROBLEMS=${SEARCH_PROBLEMS:-500}
PHASES=${PHASES:-pool,search}
C=${CHECKPOINTS:-checkpoints}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
mkdir -p "$WORK/logs"
M="--policy $C/arith-policy --prm $C/arith-prm --orm $C/arith-orm --no-progress"
POOL=majority,best_of_n_prm_last,best_of_n_prm_min,best_of_n_prm_prod,weighted_best_of_n_prm,best_of_n_orm,oracle
for lv in easy medium hard; do
  [[ $PHASES == *pool* ]] || break
  .venv/bin/ttc best-of-n $M --levels $lv --problems "$PROBLEMS" --n 1,2,4,8,16,32,64 --strategies $POOL \
    --out "$WORK/pool_$lv" > "$WORK/logs/pool_$lv.log" 2>&1 &
done
wait
for wave in 4,16,64 8,32; do
  for lv in easy medium hard; do  # --n 1: the search runs do not need a pool
    [[ $PHASES == *search* ]] || break
    .venv/bin/ttc best-of-n $M --levels $lv --problems "$SEARCH_PROBLEMS" --n 1 --strategies beam_search,dvts \
      --search-n $wave --width 4 --out "$WORK/search${wave//,/_}_$lv" > "$WORK/logs/search${wave//,/_}_$lv.log" 2>&1 &
  done
  wait
done
.venv/bin/python benchmarks/bon/merge.py --out benchmarks/results/bon --note "${NOTE:-}" "$WORK"/pool_{easy,medium,hard} \
  "$WORK"/search4_16_64_{easy,medium,hard} "$WORK"/search8_32_{easy,medium,hard}
