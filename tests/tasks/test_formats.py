"""Step formats: the canonical format renders the task's own text; every shifted format round-trips to it;
the strict verifier accepts right answers in the format only."""

from __future__ import annotations

import numpy as np
import pytest

from ttc_jax.tasks import arithmetic as A
from ttc_jax.tasks.formats import CANONICAL, SHIFTED, StepFormat, lenient_answer

PROBLEMS = [q for lv in A.LEVELS for q in A.sample_problems(3, lv, 20)]


def test_canonical_is_the_training_format():
    for q in PROBLEMS:
        assert CANONICAL.prompt(q) == q.prompt and CANONICAL.solution(q) == q.solution
        assert CANONICAL.verify(q, q.solution) == A.verify_answer(q.prompt, q.solution) is True


@pytest.mark.parametrize("name", sorted(SHIFTED))
def test_shifted_round_trip_and_verifier(name):
    fmt = SHIFTED[name]
    for q in PROBLEMS:
        text = fmt.solution(q)
        assert fmt.to_canonical(text) == q.solution and fmt.verify(q, text + "\0junk")
        assert A.exact_step_labels(q.prompt, fmt.to_canonical(text)) == [1.0] * len(q.ops)
        assert lenient_answer(text) == str(q.answer)
        wrong = text[:-1] + ("1" if text[-2] != "1" else "2") + "\n"  # the last result changed
        assert not fmt.verify(q, wrong) and lenient_answer(wrong) != str(q.answer)
        assert not fmt.verify(q, text.rstrip("\n"))  # unterminated last step: not a step
    q = PROBLEMS[-1]
    if fmt.numbered or fmt.space:  # the training format's text is not in a shifted step format
        assert not fmt.verify(q, q.solution) and fmt.to_canonical(q.solution) is None
    assert (fmt.prompt(q), fmt.solution(q)) != (q.prompt, q.solution)


def test_numbered_steps_must_count_from_one():
    fmt = StepFormat("n", numbered=":")
    q = A.Problem((3, 4, 5), ("+", "*"))
    assert fmt.solution(q) == "1:3+4=7\n2:7*5=35\n" and fmt.verify(q, "1:3+4=7\n2:7*5=35\n")
    assert not fmt.verify(q, "1:3+4=7\n3:7*5=35\n") and fmt.answer("") is None
    assert StepFormat("s", marker="Q: ", space=" ").solution(q) == "3 + 4 = 7\n7 * 5 = 35\n"


@pytest.mark.parametrize("kwargs", [dict(marker="Q\n"), dict(space="x"), dict(numbered="1:")])
def test_bad_format(kwargs):
    with pytest.raises(ValueError):
        StepFormat("bad", **kwargs)
