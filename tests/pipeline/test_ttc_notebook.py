"""Execute notebooks/test_time_compute.ipynb (the three methods alone and combined) at its small size."""

import pytest


@pytest.mark.slow
def test_notebook_executes(run_notebook):
    text, n_images = run_notebook("test_time_compute.ipynb", timeout=900)
    assert "no weight adaptation (TTT layers only)" in text and "ttt_adapt scope=ttt_w0" in text
    assert "majority" in text and "expected accuracy" in text
    assert "XLA / ledger = 1.0" in text  # the ledger within 10% of XLA's count
    assert "answers of the 4 adapted copies" in text
    assert n_images >= 1
