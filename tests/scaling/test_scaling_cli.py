"""`ttc scale fit | plan` through a parser built here with `register`, as ttc_jax.cli wires it."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from ttc_jax.scaling.cli import register
from ttc_jax.scaling.curves import curves_to_dict, synthetic_curves


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ttc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_fit_power_law_from_csv(tmp_path):
    C = np.geomspace(1e18, 1e22, 12)
    y = 5.0 * C ** -0.05
    csv = tmp_path / "runs.csv"
    csv.write_text("compute,loss\n" + "".join(f"{c},{v}\n" for c, v in zip(C, y)))
    out, png = tmp_path / "fit.json", tmp_path / "fit.png"
    assert run(["scale", "fit", "--law", "power", "--data", str(csv), "--x", "compute", "--y", "loss",
                "--bootstrap", "50", "--out", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    assert res["law"] == "power" and res["b"] == pytest.approx(-0.05, rel=1e-9)
    assert png.stat().st_size > 1000


@pytest.mark.slow  # default-run budget (31 s): the same fit runs in test_scaling_chinchilla; the CLI path in the test above
def test_fit_chinchilla_on_the_vendored_data(tmp_path):
    out = tmp_path / "chinchilla.json"
    assert run(["scale", "fit", "--out", str(out), "--plot", str(tmp_path / "c.png")]) == 0
    res = json.loads(out.read_text())
    assert res["law"] == "chinchilla" and res["n_points"] == 240
    assert 1.769 <= res["E"] <= 1.871 and 0.317 <= res["alpha"] <= 0.373 and 0.331 <= res["beta"] <= 0.415


def test_plan_from_json(tmp_path):
    curves = tmp_path / "curves.json"
    curves.write_text(json.dumps(curves_to_dict(synthetic_curves())))
    out, plots = tmp_path / "plan.json", tmp_path / "plots"
    assert run(["scale", "plan", "--curves", str(curves), "--budget", "5e9", "2e10", "--inference-ratio", "1",
                "--bootstrap", "100", "--out", str(out), "--plot-dir", str(plots)]) == 0
    res = json.loads(out.read_text())
    assert [p["budget"] for p in res["plans"]] == [5e9, 2e10]
    assert res["plans"][1]["accuracy"] > res["plans"][0]["accuracy"]
    assert res["larger_model_comparison"]["multiplier"] == pytest.approx(13.0)
    assert res["holdout"]["form"] == "exp_power" and res["holdout"]["curves"]
    assert set(res["scaling_exponents"]) == {"best_of_n_prm", "majority_vote"}
    assert sorted(p.name for p in plots.iterdir()) == ["cost_per_correct.png", "holdout.png", "plan_frontier.png",
                                                       "scaling_exponent.png"]


def test_bad_input_exits_2_with_a_reason(tmp_path, capsys):
    assert run(["scale", "plan", "--curves", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("compute,loss\n1e18,2.0\n-1e19,1.9\n1e20,1.8\n")
    assert run(["scale", "fit", "--law", "power", "--data", str(bad), "--x", "compute", "--y", "loss"]) == 2
    assert "x contains -1e+19" in capsys.readouterr().err
    assert run(["scale", "fit", "--law", "power", "--data", str(bad)]) == 2
    assert "--x" in capsys.readouterr().err
    assert run(["scale", "plan", "--budget", "1"]) == 2  # below the cheapest plan
    assert "below the cheapest plan" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["scale", "fit", "--law", "cubic"])
