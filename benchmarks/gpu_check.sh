#!/usr/bin/env bash
# One call on a GPU machine (JAX 0.11 + CUDA preinstalled, no registry access): the kernel tests
# without interpret mode, then the kernel benchmark sweep, within 8 minutes; everything under $OUT.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh          # from the repository root
#   DRY=1 OUT=/tmp/x PY=.venv/bin/python bash benchmarks/gpu_check.sh   # rehearsal on a CPU (--quick sweep)
#
# No pip install: the repository is put on PYTHONPATH through a shadow package dir in which
# ttc_jax/kernels -> kernels/ (what setup.py's package_dir does for an installed copy).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/benchmarks/results/gpu_check}
mkdir -p "$OUT"
T0=$(date +%s)

SHADOW=$(mktemp -d)
mkdir "$SHADOW/ttc_jax"
for f in "$ROOT"/ttc_jax/* "$ROOT"/ttc_jax/.[!.]*; do [ -e "$f" ] && ln -s "$f" "$SHADOW/ttc_jax/"; done
ln -s "$ROOT/kernels" "$SHADOW/ttc_jax/kernels"
export PYTHONPATH="$SHADOW${PYTHONPATH:+:$PYTHONPATH}"
unset JAX_PLATFORMS
PY=${PY:-python3}

{
  echo "== $(date -u) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  $PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

# 1) kernel tests on the GPU, compiled (no interpret mode): the gpu-marked tests of tests/kernels/
#    (each compares impl="pallas" on the device with the XLA scan, forward and gradients).
timeout 200 $PY -m pytest -q -m gpu -p no:cacheprovider tests/kernels --durations=10 \
  --junitxml="$OUT/tests_gpu.xml" 2>&1 | tee "$OUT/tests_gpu.txt" | tail -25
echo "tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tests_gpu.txt"

# 2) the benchmark sweep, target shape first, until the remaining time is spent (8 min in all).
LEFT=$(( 450 - ($(date +%s) - T0) ))
[ "$LEFT" -lt 60 ] && LEFT=60
QUICK=${DRY:+--quick}
timeout $(( LEFT + 30 )) $PY benchmarks/kernels.py $QUICK --budget-s $(( LEFT - 40 )) --repeats 3 --out "$OUT" \
  2>&1 | tee "$OUT/bench.txt" | tail -40
echo "bench exit: ${PIPESTATUS[0]}; total $(( $(date +%s) - T0 )) s" | tee -a "$OUT/bench.txt"
rm -rf "$SHADOW"
