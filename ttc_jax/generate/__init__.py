"""Sampling and the generation loop (prefill + compiled one-token steps)."""

from ttc_jax.generate.loop import decode, generate, prefill
from ttc_jax.generate.sampling import sample_token

__all__ = ["decode", "generate", "prefill", "sample_token"]
