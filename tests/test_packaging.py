"""Installed layout: kernels/ is ttc_jax.kernels; nothing imports a top-level `kernels`."""

import re
from pathlib import Path

import ttc_jax.kernels

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_is_a_subpackage():
    assert Path(ttc_jax.kernels.__file__).resolve().parent == (ROOT / "kernels").resolve()


def test_no_top_level_kernels_import():
    pattern = re.compile(r"^\s*(from|import)\s+kernels\b", re.M)
    offenders = [p for d in ("ttc_jax", "kernels", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py")
                 if pattern.search(p.read_text())]
    assert not offenders


def test_core_does_not_import_flax():
    for d in ("ttc_jax/ttt", "kernels"):
        for p in (ROOT / d).rglob("*.py"):
            assert "flax" not in p.read_text(), f"{p} imports flax; ttt/ and kernels/ are pure JAX"
