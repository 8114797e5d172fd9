"""Execute notebooks/best_of_n.ipynb end to end at a tiny size."""

import pytest


@pytest.mark.slow
def test_notebook_executes(run_notebook):
    text, n_images = run_notebook("best_of_n.ipynb", timeout=600)
    assert "exact step labels of a wrong completion: [1.0, 0.0]" in text and "easy {" in text
    assert n_images >= 2
