"""Arithmetic task: problems, verifiers, exact and Monte-Carlo step labels, JSONL import, batches."""

import json

import numpy as np
import pytest

from ttc_jax.tasks import arithmetic as A


def test_problem_solution_and_verifiers():
    q = A.Problem((347, 52, 3, 918), ("+", "*", "+"))
    assert q.prompt == "Q:347+52*3+918\n"
    assert q.steps == ["347+52=399", "399*3=1197", "1197+918=2115"]
    assert q.answer == 2115 and A.parse_prompt(q.prompt) == q
    assert A.verify_answer(q.prompt, q.solution)
    assert A.verify_answer(q.prompt, "1+1=2\n5+5=02115\n")  # final answer only, leading zeros normalised
    assert not A.verify_answer(q.prompt, "347+52=399\n399*3=1197\n1197+918=2114\n")
    assert not A.verify_answer(q.prompt, "347+52=399\n399*3=1197\n1197+918=2115")  # unterminated step
    assert not A.verify_answer(q.prompt, "") and A.final_answer("garbage\n") is None
    with pytest.raises(ValueError, match="prompt="):
        A.parse_prompt("Q:abc\n")


def test_random_problems_are_consistent():
    for lv in A.LEVELS:
        for q in A.sample_problems(3, lv, 50):
            assert len(q.terms) == A.LEVELS[lv].terms
            assert A.verify_answer(q.prompt, q.solution)
            assert A.exact_step_labels(q.prompt, q.solution) == [1.0] * len(q.ops)
            acc = q.terms[0]
            for op, t in zip(q.ops, q.terms[1:]):
                acc = acc + t if op == "+" else acc * t
            assert acc == q.answer
    assert A.sample_problems(7, "hard", 5) == A.sample_problems(7, "hard", 5)
    with pytest.raises(ValueError, match="terms=1"):
        A.Level(terms=1, digits=2)


def test_exact_step_labels_stop_at_first_error():
    q = A.Problem((12, 30, 4, 5), ("+", "+", "*"))
    wrong_then_right = "12+30=42\n42+4=47\n47*5=235\n"  # step 2 wrong, step 3 arithmetic right but off-path
    assert A.step_correct(q, A.split_steps(wrong_then_right)) == [True, False, False]
    assert A.exact_step_labels(q.prompt, wrong_then_right) == [1.0, 0.0, 0.0]
    assert A.exact_step_labels(q.prompt, q.solution + "1+1=2\n") == [1.0, 1.0, 1.0, 0.0]  # extra step is wrong
    assert A.exact_step_labels(q.prompt, "12+30=42\n42+") == [1.0]  # unterminated tail is not a step


def test_monte_carlo_labels_are_rollout_success_rates():
    q = A.Problem((2, 3, 4), ("+", "+"))
    calls = []

    def rollout(prompt, prefixes):  # from a right prefix, 3 of 4 rollouts finish correctly
        calls.append(prefixes[0])
        if prefixes[0].startswith("2+3=5\n"):
            return ["5+4=9\n", "5+4=9\n", "5+4=9\n", "5+4=8\n"] if prefixes[0] == "2+3=5\n" else [""] * 4
        return ["6+4=10\n"] * 4

    assert A.mc_step_labels(q.prompt, "2+3=5\n5+4=9\n", rollout) == [0.75, 1.0]
    assert A.mc_step_labels(q.prompt, "2+3=6\n6+4=10\n", rollout) == [0.0, 0.0]
    assert calls[0] == "2+3=5\n"


def test_jsonl_roundtrip_and_bad_input(tmp_path):
    path = tmp_path / "steps.jsonl"
    ex = [A.StepExample("Q:1+2\n", ("1+2=3",), (1.0,)), A.StepExample("any prompt", ("a", "b"), (1.0, 0.25))]
    A.save_step_jsonl(str(path), ex)
    assert A.load_step_jsonl(str(path)) == ex
    for line, msg in [('{"prompt": "p", "steps": ["a"]}', "expected an object"),
                      ('{"prompt": "p", "steps": ["a", "b"], "labels": [1]}', "2 steps but 1 labels"),
                      ('{"prompt": "p", "steps": ["a"], "labels": [2]}', "label 2"),
                      ('{"prompt": "p", "steps": ["a\\nb"], "labels": [1]}', "separator"),
                      ("not json", "not JSON")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": "p", "steps": ["x"], "labels": [True]}) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=msg):
            A.load_step_jsonl(str(bad))


def test_lm_batch_layout_and_mask():
    rng = np.random.default_rng(0)
    toks, mask = A.lm_batch([("Q:1+2\n", "1+2=3\n")], 24, rng, max_left_pad=4)
    row = toks[0].tolist()
    text = A.decode([t for t in row if t != A.PAD] + [A.EOS])
    assert text == "Q:1+2\n1+2=3\n" and A.EOS in row
    start = row.index(ord("Q"))
    targets = [row[t + 1] for t in np.flatnonzero(mask[0])]
    assert targets == A.encode("1+2=3\n") + [A.EOS]
    assert all(t == A.PAD for t in row[:start])
    with pytest.raises(ValueError, match="does not fit"):
        A.lm_batch([("Q:1+2\n", "1+2=3\n")], 8)


def test_corrupted_solutions_are_wrong_from_one_step_on():
    rng = np.random.default_rng(0)
    for lv in A.LEVELS:
        for q in A.sample_problems(5, lv, 40):
            steps = A.corrupt_steps(q, rng)
            labels = A.exact_step_labels(q.prompt, "".join(s + "\n" for s in steps))
            assert len(steps) == len(q.steps) and 0.0 in labels
            first = labels.index(0.0)
            assert steps[:first] == q.steps[:first] and steps[first] != q.steps[first]
            assert all(A._STEP.fullmatch(s) for s in steps)


def test_corpus_texts_layout_and_exclusion():
    held = A.heldout_prompts(300)
    texts = A.corpus_texts(500, 1000, {"easy": 1.0, "medium": 0.0}, exclude=held, max_left_pad=5)
    assert len(texts) == 500
    for t in texts:
        body = t.lstrip(chr(A.PAD))
        assert len(t) - len(body) <= 5 and body.endswith(chr(A.EOS))
        prompt, sol = body[: body.index("\n") + 1], body[body.index("\n") + 1: -1]
        assert prompt not in held and A.verify_answer(prompt, sol) and A.parse_prompt(prompt).terms[0] < 10
    assert held >= {q.prompt for q in A.sample_problems(0, "easy", 300)}
    with pytest.raises(ValueError, match="seed=3"):
        A.corpus_texts(1, 3, {"easy": 1.0})
    with pytest.raises(ValueError, match="weights="):
        A.corpus_texts(1, 1000, {"tiny": 1.0})
