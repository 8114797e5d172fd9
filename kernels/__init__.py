"""Pallas kernels for ttc-jax, installed as the subpackage ``ttc_jax.kernels``.

One folder per op (reference hook, forward, backward and decode kernels, config,
api with fallback). Empty until the fused TTT kernels land; the XLA scan in
``ttc_jax.ttt`` is the reference and the fallback.
"""
