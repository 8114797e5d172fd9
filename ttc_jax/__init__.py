"""ttc-jax: test-time compute in JAX and Flax NNX."""

__version__ = "0.1.0"
