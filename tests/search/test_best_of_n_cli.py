"""`ttc best-of-n` end to end at a tiny size (random tiny models; slow: many compiled shapes), the curves it
writes load in the planner (also the recorded ones), bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from ttc_jax.cli import main
from ttc_jax.nn.config import get_config
from ttc_jax.nn.model import HybridLM
from ttc_jax.nn.prm import RewardModel
from ttc_jax.scaling.curves import curves_from_dict
from ttc_jax.search import checkpoint
from ttc_jax.search.cli import curves_dict
from ttc_jax.tasks import arithmetic as A

CFG = get_config("tiny-transformer", d_model=32, ffn_dim=64, n_layers=1, max_seq_len=128)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("bon")
    checkpoint.save(str(d / "policy"), HybridLM(CFG, rngs=nnx.Rngs(0)))
    for kind in ("prm", "orm"):
        rm = RewardModel(CFG, separator=A.SEP, kind=kind, rngs=nnx.Rngs(1))
        checkpoint.save(str(d / kind), rm, {"separator": A.SEP, "kind": kind})
    rm = RewardModel(CFG, separator=ord(";"), rngs=nnx.Rngs(1))
    checkpoint.save(str(d / "prm_semicolon"), rm, {"separator": ord(";"), "kind": "prm"})
    return d


@pytest.fixture(scope="module")
def run(ckpts):
    out = ckpts / "out"
    rc = main(["best-of-n", "--policy", str(ckpts / "policy"), "--prm", str(ckpts / "prm"), "--orm",
               str(ckpts / "orm"), "--levels", "easy,medium", "--problems", "2", "--n", "1,2,4", "--search-n", "2,4",
               "--width", "2", "--max-new-tokens", "24", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_results_and_plots(run):
    res = json.loads((run / "results.json").read_text())
    assert set(res["levels"]) == {"easy", "medium"}
    acc = res["levels"]["easy"]["accuracy"]
    assert set(acc) == {"majority", "best_of_n_prm_last", "best_of_n_prm_min", "best_of_n_prm_prod",
                        "weighted_best_of_n_prm", "best_of_n_orm", "oracle", "beam_search", "dvts"}
    assert set(acc["majority"]) == {"1", "2", "4"} and set(acc["beam_search"]) == {"2", "4"}
    for d in acc.values():
        assert all(0.0 <= v <= 1.0 for v in d.values())
    one = {acc[k]["1"] for k in acc if "1" in acc[k]}
    assert len(one) == 1  # every pool rule picks the only candidate at N = 1
    assert np.all(np.diff([acc["oracle"][n] for n in ("1", "2", "4")]) >= 0)
    dg = res["levels"]["easy"]["diagnostics"]
    assert {"distinct_answers", "pairwise_token_difference", "calibration", "hist_last", "selection_min"} <= set(dg)
    assert (run / "accuracy_vs_n.png").stat().st_size > 0 and (run / "diagnostics.png").stat().st_size > 0


def _check_planner_loads(path: Path, tmp_path: Path, bins: set):
    cs = curves_from_dict(json.loads(path.read_text()))
    assert set(cs.bins) == bins and "weighted_best_of_n_prm" in cs.strategies
    # PRM scoring costs FLOPs on top of generation
    assert cs.strategies["best_of_n_prm_last"].cost.per_sample > cs.strategies["majority"].cost.per_sample > 0
    rc = main(["scale", "plan", "--curves", str(path), "--holdout", "none", "--bootstrap", "20",
               "--out", str(tmp_path / "plan.json")])
    assert rc == 0
    assert json.loads((tmp_path / "plan.json").read_text())["plans"]


@pytest.mark.slow
def test_written_curves_load_in_the_planner(run, tmp_path):
    _check_planner_loads(run / "curves.json", tmp_path, {"easy", "medium"})


def test_curves_from_results_load_in_the_planner(tmp_path):
    acc = lambda a: {"1": a, "2": min(1.0, a + 0.1), "4": min(1.0, a + 0.15)}
    level = lambda a: {"accuracy": {"majority": acc(a), "best_of_n_prm_last": acc(a + 0.05),
                                    "weighted_best_of_n_prm": acc(a + 0.06), "beam_search": {"4": a + 0.2, "16": a + 0.25},
                                    "dvts": {"4": a}},
                       "num_problems": 10, "num_search_problems": 5, "mean_prompt_tokens": 14.0,
                       "mean_completion_tokens": 30.0}
    results = {"levels": {"easy": level(0.6), "hard": level(0.1)}}
    d = curves_dict(results, CFG, prm_cfg=CFG)
    assert d["strategies"]["beam_search"]["curves"]["easy"] == {"n": [4, 16], "accuracy": [0.8, 0.85],
                                                                "num_questions": 5}
    assert "dvts" not in d["strategies"]  # one N only: nothing for the planner to fit
    (tmp_path / "curves.json").write_text(json.dumps(d))
    _check_planner_loads(tmp_path / "curves.json", tmp_path, {"easy", "hard"})


RECORDED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "bon" / "curves.json"


@pytest.mark.skipif(not RECORDED.exists(), reason="no recorded best-of-N curves yet")
def test_recorded_curves_load_in_the_planner(tmp_path):
    _check_planner_loads(RECORDED, tmp_path, {"easy", "medium", "hard"})


@pytest.mark.parametrize("extra,msg", [
    (["--n", "0,2"], "N=0"),
    (["--search-n", "6", "--width", "4"], "M=4 does not divide N=6"),
    (["--prm", "{d}/prm_semicolon"], "separator=59 does not match the task's separator=10"),
    (["--strategies", "majority,best"], "best"),
])
def test_bad_input(ckpts, capsys, extra, msg):
    args = ["best-of-n", "--policy", str(ckpts / "policy"), "--out", str(ckpts / "bad"), "--problems", "1",
            "--no-progress"] + [e.format(d=ckpts) for e in extra]
    assert main(args) == 2
    assert msg in capsys.readouterr().err
