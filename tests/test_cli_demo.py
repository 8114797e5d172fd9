"""`ttc demo` end to end at a small size, and the CLI's one-line errors."""

import json

import pytest

from ttc_jax.cli import main


@pytest.mark.slow  # default-run budget (37 s): `ttc demo --random`; the shipped-model demo runs by default
def test_demo_runs_and_decoding_matches_full_pass(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--random", "--batch", "2", "--seq-len", "32", "--new-tokens", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["greedy_agreement"] == 1.0
    assert result["parameters"]["total"] == sum(v for k, v in result["parameters"].items() if k != "total")
    assert sorted(result["inner_loss"]) == ["0", "1", "2"]  # the three TTT layers of tiny-hybrid
    assert "decode vs full pass" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_and_nonzero(capsys):
    assert main(["demo", "--random", "--preset", "ttt-linear-7b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown preset name='ttt-linear-7b'" in err


def test_demo_bad_sizes_are_one_line_errors(capsys):
    for argv, msg in ((["--batch", "0"], "batch=0; expected an int >= 1"),
                      (["--seq-len", "1"], "seq_len=1; expected an int >= 2 (half of it is the prompt)"),
                      (["--new-tokens", "0"], "new_tokens=0; expected an int >= 1")):
        assert main(["demo", "--random", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and msg in err, err


def test_pretrained_demo_end_to_end_with_the_shipped_models(tmp_path, capsys):
    """`ttc demo` (what `make run` runs) at a small size: shipped policy + PRM best-of-N table, plot, code completion."""
    out = tmp_path / "demo"
    assert main(["demo", "--levels", "easy", "--problems", "2", "--n", "1,2", "--prompt-bytes", "64",
                 "--new-tokens", "8", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "demo.json").read_text())
    acc = result["best_of_n"]["levels"]["easy"]["accuracy"]
    assert sorted(acc) == ["best_of_n_prm_last", "majority", "oracle", "weighted_best_of_n_prm"]
    assert all(0.0 <= acc[s][n] <= 1.0 for s in acc for n in ("1", "2"))
    assert acc["oracle"]["2"] >= max(acc[s]["2"] for s in acc)  # pass@N bounds every selection rule
    code = result["code"]
    assert len(code["prompt"]) == 64 and code["prompt"].rstrip().endswith(":") and len(code["completion"]) <= 8
    inner = code["inner_loss_before"]
    assert len(inner) == 4 and len(inner[0]) == 8  # 4 TTT layers x 64/8 mini-batches
    assert (out / "demo.png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "| easy | majority |" in text and "TTT inner loss over the prompt" in text


def test_pretrained_demo_bad_input(capsys):
    for argv, msg in ((["--problems", "0"], "problems=0; expected an int >= 1"),
                      (["--n", "0,4"], "--n='0,4'; expected a comma list of ints >= 1"),
                      (["--policy", "no-such-model"], "no-such-model")):
        assert main(["demo", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and msg in err, err
