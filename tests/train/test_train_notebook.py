"""Execute notebooks/train_hybrid.ipynb end to end at a small size."""

import pytest


@pytest.mark.slow  # default-run budget: about 35 s; `make test-all` runs it
def test_train_notebook_executes(run_notebook):
    text, n_images = run_notebook("train_hybrid.ipynb", timeout=900)
    assert "trained 12 steps" in text and "inner loss gap" in text and "eval at step 12" in text
    assert n_images >= 3
