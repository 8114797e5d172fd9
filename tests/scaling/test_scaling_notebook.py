"""Execute notebooks/compute_optimal_scaling.ipynb end to end at CI sizes."""

import pytest


@pytest.mark.slow  # default-run budget (42-65 s), like the other two notebooks; make test-all runs it
def test_notebook_executes(run_notebook):
    text, n_images = run_notebook("compute_optimal_scaling.ipynb", timeout=300)
    assert "reached the best loss" in text and "k > n:" in text
    assert n_images >= 6
