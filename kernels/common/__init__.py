"""Pieces shared by the per-op kernel folders: configs, backend registry, the mini-batch math,
the Mosaic TPU `pallas_call` kernels, and the custom_vjp wrapper with the XLA head/tail."""
