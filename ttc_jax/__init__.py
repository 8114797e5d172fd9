"""ttc-jax: test-time compute in JAX and Flax NNX."""

__version__ = "0.1.0"

_LAZY = {"from_pretrained": "ttc_jax.checkpoints.store", "save_pretrained": "ttc_jax.checkpoints.store"}


def __getattr__(name):  # keeps `import ttc_jax` light: jax/flax load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ttc_jax' has no attribute {name!r}")


__all__ = ["__version__", "from_pretrained", "save_pretrained"]
