"""Fused TTT kernels vs the XLA scan vs the primal reference (see ttc_jax.kernels.bench).

    python benchmarks/kernels.py                          # the full sweep (GPU/TPU)
    python benchmarks/kernels.py --quick                  # tiny shapes on the CPU, interpret mode
    python benchmarks/kernels.py --budget-s 300 --out DIR # what benchmarks/gpu_check.sh runs
"""

from ttc_jax.kernels.bench import main

if __name__ == "__main__":
    main()
