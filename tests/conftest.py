"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def run_notebook(monkeypatch):
    """Execute notebooks/NAME at its small size; returns (stream text, number of PNG outputs).

    Fails on any cell error.
    """
    import nbformat
    from nbclient import NotebookClient

    def run(name: str, timeout: int) -> tuple[str, int]:
        monkeypatch.setenv("TTC_NOTEBOOK_SMALL", "1")
        monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
        return text, sum("image/png" in o.get("data", {}) for o in outputs)

    return run
