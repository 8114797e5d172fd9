"""`ttc train` / `ttc eval` end to end on a tiny model: loss drops, resume is bit-identical, bad inputs
fail in one line before writing anything."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from ttc_jax import cli
from ttc_jax.train.metrics import read_metrics
from ttc_jax.train import trainer
from ttc_jax.train.evaluate import load_run

from _train_helpers import TINY, make_corpus

STEPS = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


def _args(data_dir, extra=()):
    return [*TINY, f"data_dir={data_dir}", "eval_every=12", "save_every=8", *extra]


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """One uninterrupted `ttc train` run of STEPS steps (the CLI itself)."""
    wd = str(tmp_path_factory.mktemp("full"))
    rc = cli.main(["train", "--config", "tiny-ttt-linear", "--workdir", wd, "--steps", str(STEPS),
                   "--no-progress", "--set", *_args(corpus)])
    assert rc == 0
    return wd




def test_train_end_to_end_loss_drops_and_everything_is_logged(full_run):
    rows = read_metrics(full_run)
    train_rows = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [12, 24]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 1.0  # from ~ln 256 = 5.5 down
    assert val[-1]["val_loss"] < val[0]["val_loss"] and val[-1]["val_loss"] < 4.5
    assert val[-1]["val_ppl"] == pytest.approx(np.exp(val[-1]["val_loss"]))
    r = train_rows[-1]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "ttt/0/loss_before", "ttt/0/loss_after",
                "ttt/1/loss_before", "ttt/1/loss_after"):
        assert key in r and np.isfinite(r[key]), key
    assert 0 < r["mfu"] < 1
    assert os.listdir(os.path.join(full_run, "tb"))  # TensorBoard event file
    with open(os.path.join(full_run, "loss_by_position.json")) as f:
        curve = next(iter(json.load(f).values()))
    assert len(curve) == 32 and os.path.isfile(os.path.join(full_run, "loss_by_position.png"))
    # keep the last 3 (8, 16, 24) plus the best by validation loss
    assert sorted(int(s) for s in os.listdir(os.path.join(full_run, "checkpoints")) if s.isdigit()) == [8, 16, 24]


def test_resume_is_bit_identical_to_never_stopping(full_run, corpus, tmp_path):
    wd = str(tmp_path / "resumed")
    s1 = trainer.train("tiny-ttt-linear", wd, steps=STEPS, overrides=_args(corpus), progress=False, stop_after=10)
    assert s1["step"] == 10 and s1["stopped"] == "stop_after"
    s2 = trainer.train("tiny-ttt-linear", wd, steps=STEPS, overrides=_args(corpus), progress=False)
    assert s2["start_step"] == 10 and s2["step"] == STEPS
    a = load_run(full_run)[4]
    b = load_run(wd)[4]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_eval_cli_reports_loss_perplexity_and_loss_by_position(full_run, capsys):
    assert cli.main(["eval", "--workdir", full_run, "--batches", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [r for r in read_metrics(full_run) if "val_loss" in r]
    assert out["step"] == STEPS
    assert out["val_loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)  # same 2 batches as in training
    assert os.path.isfile(os.path.join(full_run, f"eval_step{STEPS}_by_position.png"))


def _snapshot(wd):
    out = {}
    for root, _, files in os.walk(wd):
        for f in files:
            p = os.path.join(root, f)
            out[p] = os.stat(p).st_mtime_ns
    return out


@pytest.mark.parametrize("argv,message", [
    (["--config", "tiny-nope"], "unknown preset"),
    (["--config", "tiny-ttt-linear", "--set", "learning_rate=1"], "unknown key 'learning_rate'"),
    (["--config", "tiny-ttt-linear", "--set", "batch_size=four"], "batch_size='four': expected an int"),
    (["--config", "tiny-ttt-linear", "--set", "mesh.data=2"], "but there are 1"),
    (["--config", "tiny-ttt-linear", "--set", "mesh.pipeline=2"], "unknown key 'mesh.pipeline'"),
    (["--config", "tiny-ttt-linear", "--set", "lr=-1"], "lr must be > 0"),
    (["--config", "tiny-ttt-linear", "--set", "corpus=/nonexistent/corpus"], "/nonexistent/corpus"),
])
def test_bad_input_is_one_line_error(argv, message, tmp_path, capsys):
    wd = str(tmp_path / "wd")
    rc = cli.main(["train", "--workdir", wd, "--steps", "2", "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ttc train: error:") and message in err and "\n" not in err, err
    assert not os.path.exists(os.path.join(wd, "checkpoints"))


def test_another_runs_workdir_is_refused_and_untouched(full_run, corpus, capsys):
    before = _snapshot(full_run)
    rc = cli.main(["train", "--config", "tiny-ttt-linear", "--workdir", full_run, "--steps", str(STEPS + 4),
                   "--no-progress", "--set", *_args(corpus, ["lr=3e-3"])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "holds another run's config" in err and "train.lr" in err
    assert _snapshot(full_run) == before


def test_checkpoint_with_other_shapes_is_refused_and_untouched(full_run, corpus, tmp_path, capsys):
    """A workdir whose config.json says d_model=48 but whose checkpoints hold d_model=32."""
    import shutil
    wd = str(tmp_path / "mismatch")
    shutil.copytree(full_run, wd)
    args = [a if not a.startswith("d_model=") else "d_model=48" for a in _args(corpus)]
    os.remove(os.path.join(wd, "config.json"))
    from ttc_jax.train import config as C
    mcfg, tcfg = C.run_config("tiny-ttt-linear", args, steps=STEPS)
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump(C.to_json(mcfg, tcfg, "tiny-ttt-linear"), f)
    before = _snapshot(wd)
    rc = cli.main(["train", "--config", "tiny-ttt-linear", "--workdir", wd, "--steps", str(STEPS + 4),
                   "--no-progress", "--set", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "does not match the config" in err and "(256, 48)" in err and "\n" not in err, err
    assert _snapshot(wd) == before
    rc = cli.main(["eval", "--workdir", full_run, "--config", "tiny-ttt-linear", "--set", *args])
    assert rc == 2 and "does not match the config" in capsys.readouterr().err
