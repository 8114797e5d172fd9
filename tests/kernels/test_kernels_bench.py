"""benchmarks/kernels.py (ttc_jax.kernels.bench) runs at tiny sizes and writes well-formed results."""

import json

import pytest

from ttc_jax.cli import build_parser
from ttc_jax.kernels import bench


def test_flop_count_per_token():
    # TTT-Linear: 6F^2 + 4KF; TTT-MLP: 56F^2 + 20KF (F -> 4F -> F, one backpropagated layer)
    assert bench.model_flops_per_token("ttt_linear", 64, 16) == 6 * 64**2 + 4 * 16 * 64
    assert bench.model_flops_per_token("ttt_mlp", 64, 16) == 56 * 64**2 + 20 * 16 * 64
    assert bench.device_peaks("NVIDIA H200")[2] == 4.8e12


def test_quick_forward_pallas_vs_xla(tmp_path):
    result = bench.main(["--quick", "--kinds", "ttt_linear", "--impls", "pallas", "xla", "--modes", "forward",
                         "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "kernels_cpu_quick.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [r["impl"] for r in saved["results"]] == ["pallas", "xla"]
    assert all(r["tokens_per_s"] > 0 and r["flop_per_s"] > 0 for r in saved["results"])
    assert len(saved["speedup"]) == 1
    assert (tmp_path / "kernels_cpu_quick.png").stat().st_size > 0


def test_cli_parses_bench_kernels():
    args = build_parser().parse_args(["bench", "kernels", "--quick", "--kinds", "ttt_mlp"])
    assert args.quick and args.kinds == ["ttt_mlp"] and callable(args.func)


@pytest.mark.slow
def test_quick_full_sweep(tmp_path):
    result = bench.main(["--quick", "--out", str(tmp_path)])
    assert len(result["results"]) == 2 * 3 * 2  # learners x impls x modes
    assert all("ms" in r for r in result["results"])
