"""Execute notebooks/train_hybrid.ipynb end to end at a small size."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "train_hybrid.ipynb"


@pytest.mark.slow  # default-run budget: about 35 s; `make test-all` runs it
def test_train_notebook_executes(monkeypatch):
    monkeypatch.setenv("TTC_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "trained 12 steps" in text and "inner loss gap" in text and "eval at step 12" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
