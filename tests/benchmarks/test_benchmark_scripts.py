"""The benchmark scripts run end to end at tiny sizes and write well-formed results."""

import json

import pytest
from bench_loader import load



@pytest.mark.slow  # default-run budget (37 s); make test-all runs the benchmark scripts' quick modes
def test_ttt_layer_benchmark_quick(tmp_path):
    result = load("ttt_layer").main(["--quick", "--out", str(tmp_path)])
    saved = json.loads(next(tmp_path.glob("ttt_layer_*.json")).read_text())
    assert saved["shape"] == {"B": 1, "H": 2, "F": 8, "K": 8}
    assert len(saved["results"]) == 2 * 2 * 2  # learners x modes x impls
    assert all(r["tokens_per_s"] > 0 for r in saved["results"])
    assert len(result["speedup"]) == 4
    assert next(tmp_path.glob("ttt_layer_*.png")).stat().st_size > 0
