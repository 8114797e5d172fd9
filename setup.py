"""Package discovery: ttc_jax/ plus kernels/ installed as the subpackage ttc_jax.kernels."""

from setuptools import find_packages, setup


def _tree(root: str, name: str) -> list[str]:
    return [name] + [f"{name}.{p}" for p in find_packages(root)]


setup(
    packages=_tree("ttc_jax", "ttc_jax") + _tree("kernels", "ttc_jax.kernels"),
    package_dir={"ttc_jax": "ttc_jax", "ttc_jax.kernels": "kernels"},
)
