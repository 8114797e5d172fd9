"""`ttc train --objective prm|orm` on a tiny model: the BCE falls, resume equals never stopping, `ttc export`
writes a reward model that `load_reward_pretrained` reads back with the same scores and validation BCE,
bad inputs fail in one line before anything is written."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax import cli
from ttc_jax.tasks import arithmetic as A
from ttc_jax.train.metrics import read_metrics
from ttc_jax.train import trainer
from ttc_jax.train.evaluate import load_run

# a 2-layer attention model on 32-byte rows (easy problems fit: "Q:a+b*c\n" + two steps + EOS)
TINY = ["n_layers=2", "d_model=32", "n_heads=2", "ffn_dim=64", "seq_len=32", "batch_size=8", "warmup_steps=2",
        "lr=1e-2", "weight_decay=0", "log_every=2", "eval_every=8", "eval_batches=2", "save_every=8", "max_left_pad=4"]
STEPS = 16


def _rows(seed: int, n: int) -> list[A.StepExample]:
    """Random easy problems, each with its reference or a corrupted solution (exact labels, outcome)."""
    rng = np.random.default_rng(seed)
    out = []
    for q in A.sample_problems(seed + 1000, "easy", n):
        steps = q.steps if rng.random() < 0.5 else A.corrupt_steps(q, rng)
        text = "".join(s + "\n" for s in steps)
        out.append(A.StepExample(q.prompt, tuple(steps), tuple(A.exact_step_labels(q.prompt, text)),
                                 float(A.verify_answer(q.prompt, text))))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("steps")
    A.save_step_jsonl(str(d / "train.jsonl"), _rows(0, 8))  # a tiny set to overfit
    A.save_step_jsonl(str(d / "val.jsonl"), _rows(1, 12))
    return str(d / "train.jsonl"), str(d / "val.jsonl")


def _argv(wd, data, objective="prm", extra=()):
    return ["train", "--config", "tiny-transformer", "--workdir", wd, "--steps", str(STEPS), "--objective",
            objective, "--data", data[0], "--val-data", data[1], "--no-progress", "--set", *TINY, *extra]


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("prm_full"))
    assert cli.main(_argv(wd, data)) == 0
    return wd




def test_prm_bce_falls_on_a_tiny_set_and_validation_is_logged(full_run):
    rows = read_metrics(full_run)
    loss = [r["loss"] for r in rows if "loss" in r]
    assert loss[-1] < loss[0] - 0.1, loss  # from ~ln 2, memorising 8 rows
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [8, 16]
    for r in val:
        assert np.isfinite(r["val_loss"]) and 0.0 <= r["val_auroc"] <= 1.0 and r["val_positions"] > 0
    assert all(np.isfinite(r["tokens_per_s"]) for r in rows if "tokens_per_s" in r)
    with open(os.path.join(full_run, "invocations.jsonl")) as f:
        call = json.loads(f.readline())
    assert call["step"] == STEPS and "--objective prm" in call["command"] and "--data" in call["command"]


@pytest.mark.slow  # two more trainer invocations (~20 s); tests/train/test_trainer.py covers resume by default
def test_resume_equals_never_stopping(full_run, data, tmp_path):
    wd = str(tmp_path / "resumed")
    args = _argv(wd, data)
    overrides = args[args.index("--set") + 1:] + ["objective=prm", f"step_data={os.path.abspath(data[0])}",
                                                  f"val_data={os.path.abspath(data[1])}"]
    s1 = trainer.train("tiny-transformer", wd, steps=STEPS, overrides=overrides, progress=False, stop_after=6)
    assert s1["step"] == 6 and s1["stopped"] == "stop_after"
    s2 = trainer.train("tiny-transformer", wd, steps=STEPS, overrides=overrides, progress=False)
    assert s2["start_step"] == 6 and s2["step"] == STEPS
    a, b = load_run(full_run)[4], load_run(wd)[4]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_loads_as_a_reward_model_with_the_same_scores_and_validation_bce(full_run, data, tmp_path):
    from ttc_jax.search.checkpoint import load_reward_pretrained
    from ttc_jax.search.training import reward_batch
    from ttc_jax.train.reward import as_example

    dst = str(tmp_path / "my-prm")
    assert cli.main(["export", full_run, dst]) == 0
    rm = load_reward_pretrained(dst)
    assert rm.kind == "prm" and rm.separator == A.SEP
    mcfg, tcfg, _, graphdef, state, step, _ = load_run(full_run)
    tokens = jnp.asarray(np.random.default_rng(0).integers(2, 256, (3, 32)), jnp.int32)
    from ttc_jax.train.reward import make_score_fn
    np.testing.assert_allclose(np.asarray(rm(tokens)), np.asarray(make_score_fn(graphdef)(state["params"], tokens)),
                               rtol=1e-6, atol=1e-6)
    # the logged validation BCE, recomputed by hand with the exported model on the validation rows
    ex = [as_example(e, "prm") for e in A.load_step_jsonl(data[1])][:16]  # eval_batches x batch_size
    x, y, w = reward_batch(ex, 32, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind="prm")
    p = np.clip(np.asarray(rm(jnp.asarray(x)), np.float64), 1e-7, 1 - 1e-7)
    bce = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum()
    logged = [r for r in read_metrics(full_run) if "val_loss" in r][-1]["val_loss"]
    assert bce == pytest.approx(logged, rel=1e-4)
    card = open(os.path.join(dst, "README.md")).read()
    assert "ttc train --config tiny-transformer" in card and "--objective prm" in card and "AUROC" in card
    # --init DST: a PRM run takes its backbone and head, an ORM run its backbone only, an LM run the backbone
    _, target = trainer.abstract_model(mcfg, 0, objective="prm")
    got = trainer.load_init_params(dst, mcfg, "prm", target, "tiny-transformer")
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert set(trainer.load_init_params(dst, mcfg, "orm", target, "tiny-transformer")) == {"backbone"}
    got = trainer.load_init_params(dst, mcfg, "lm", target["backbone"], "tiny-transformer")
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(state["params"]["backbone"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_eval_of_a_reward_run_points_to_its_metrics(full_run, capsys):
    assert cli.main(["eval", "--workdir", full_run]) == 2
    assert "is a reward-model run (objective 'prm')" in capsys.readouterr().err


def test_orm_labels_sit_at_the_last_token_and_come_from_the_outcome(data):
    from ttc_jax.search.training import reward_batch
    from ttc_jax.train.reward import as_example

    e = A.StepExample("Q:1+2*3\n", ("1+2=3", "3*3=8"), (1.0, 0.0), outcome=1.0)  # outcome wins
    x, y, w = reward_batch([as_example(e, "orm")], 24, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind="orm")
    assert w.sum() == 1 and y[0, -1] == 1.0 and w[0, -1] == 1.0 and x[0, -1] == A.EOS
    no_outcome = A.StepExample(e.prompt, e.steps, e.labels)
    assert as_example(no_outcome, "orm")[2] == [0.0, 0.0]


def _snapshot(wd):
    return sorted(os.listdir(wd)) if os.path.isdir(wd) else None


def _bad(tmp_path, lines):
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(line + "\n" for line in lines))
    return str(p)


GOOD = json.dumps({"prompt": "Q:1+2\n", "steps": ["1+2=3"], "labels": [1]})


@pytest.mark.parametrize("case,message", [
    ("malformed", "bad.jsonl:2: not JSON"),
    ("count", "bad.jsonl:1: 2 steps but 1 labels"),
    ("outcome", "bad.jsonl:1: outcome 2; expected a number in [0, 1]"),
    ("objective", "objective='value'; expected one of ['lm', 'prm', 'orm']"),
    ("no_data", "objective='prm' needs step_data"),
    ("lm_data", "are read by objective prm or orm only"),
    ("missing", "no such file"),
    ("init", "--init='arith-policy' does not match --config='tiny-transformer': its d_model is 128"),
    ("init_name", "unknown model name='no-such-model'"),
])
def test_bad_input_is_one_line_error_and_writes_nothing(case, message, data, tmp_path, capsys):
    wd = str(tmp_path / "wd")
    train, val = data
    extra, objective = [], "prm"
    if case == "malformed":
        train = _bad(tmp_path, [GOOD, '{"prompt": "Q:1+2\\n", "steps": ["1+2=3"]'])
    elif case == "count":
        train = _bad(tmp_path, [json.dumps({"prompt": "Q:1+2\n", "steps": ["1+2=3", "3"], "labels": [1]})])
    elif case == "outcome":
        train = _bad(tmp_path, [json.dumps({"prompt": "Q:1+2\n", "steps": ["1+2=3"], "labels": [1], "outcome": 2})])
    elif case == "objective":
        objective = "value"
    elif case == "lm_data":
        objective = "lm"
    elif case == "missing":
        train = str(tmp_path / "nope.jsonl")
    elif case == "init":
        extra = ["--init", "arith-policy"]
    elif case == "init_name":
        extra = ["--init", "no-such-model"]
    argv = _argv(wd, (train, val), objective)
    if case == "no_data":
        i = argv.index("--data")
        del argv[i:i + 2]
    rc = cli.main(argv[:argv.index("--set")] + extra + argv[argv.index("--set"):])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ttc train: error:") and message in err and "\n" not in err, err
    assert _snapshot(wd) is None

