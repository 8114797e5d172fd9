"""Execute notebooks/best_of_n.ipynb end to end at a tiny size."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "best_of_n.ipynb"


@pytest.mark.slow
def test_notebook_executes(monkeypatch, tmp_path):
    monkeypatch.setenv("TTC_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "exact step labels of a wrong completion: [1.0, 0.0]" in text and "easy {" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
