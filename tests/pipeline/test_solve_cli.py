"""`ttc solve`: one-line errors before anything loads, and one query end to end with the shipped models."""

import json

import pytest

from ttc_jax.cli import main

CURVES = "benchmarks/results/bon/curves.json"
BASE = ["solve", "--policy", "arith-policy", "--curves", CURVES]


@pytest.mark.parametrize("argv, msg", [
    (["--budget", "0", "--prompt", "Q:1+2"], "--budget=0.0; expected FLOPs > 0"),
    (["--budget", "1e9"], "pass one of --prompt TEXT or --problems N"),
    (["--budget", "1e9", "--prompt", "Q:1+2", "--problems", "3"], "pass one of --prompt TEXT or --problems N"),
    (["--budget", "1e9", "--prompt", "1+2"], "prompt='1+2\\n'; expected 'Q:<n>(+|*)<n>...'"),
    (["--budget", "1e9", "--problems", "2", "--levels", "easy,extreme"], "--levels has 'extreme'"),
    (["--budget", "1e9", "--prompt", "Q:1+2", "--adapt-prefix", "Q:1+1"], "--adapt-prefix needs --gains"),
])
def test_bad_arguments_are_one_line_errors(argv, msg, capsys):
    assert main(BASE + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and msg in err, err


@pytest.mark.slow
def test_one_query_with_the_shipped_models(tmp_path, capsys):
    out = tmp_path / "solve.json"
    assert main(BASE + ["--prm", "arith-prm", "--budget", "2e9", "--prompt", "Q:3+4*2", "--calibrate", "2",
                        "--max-new-tokens", "32", "--check-flops", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "answer:" in text and "XLA / ledger" in text
    row = json.loads(out.read_text())["solutions"][0]
    assert row["flops"]["total"] <= 2e9
    assert 1.0 <= row["flops_ratio_xla"] <= 1.10
