"""Selection rules and step-score aggregation on hand-made inputs (ties included)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.nn.prm import aggregate
from ttc_jax.search import selection as S
from ttc_jax.search.tree import aggregate_steps


def test_majority_counts_and_ties():
    assert S.majority(["3", "5", "5", "3", "5"]).answer == "5"
    sel = S.majority(["3", "5", "5", "3"])  # tie: the answer seen first wins
    assert (sel.answer, sel.index) == ("3", 0)
    assert S.majority([None, "7", None, None]).answer == "7"  # no answer never wins a vote
    sel = S.majority([None, None])
    assert (sel.answer, sel.index) == (None, -1)
    np.testing.assert_array_equal(S.majority(["a", "b", "a"]).scores, [2, 1, 2])


def test_best_of_n_argmax_first_on_ties():
    sel = S.best_of_n(["1", "2", "3"], [0.2, 0.9, 0.9])
    assert (sel.answer, sel.index) == ("2", 1)
    assert S.best_of_n(["1", "2", "3"], [0.7, 0.1, 0.2]).answer == "1"
    assert S.best_of_n(["1", None], [0.1, 0.9]).answer is None  # the top candidate has no answer


def test_weighted_sums_per_answer():
    # "2" has the single best score but "1" has more total mass
    answers, scores = ["1", "2", "1", "1"], [0.4, 0.9, 0.3, 0.3]
    assert S.best_of_n(answers, scores).answer == "2"
    sel = S.weighted_best_of_n(answers, scores)
    assert sel.answer == "1" and sel.index == 0
    np.testing.assert_allclose(sel.scores, [1.0, 0.9, 1.0, 1.0])
    assert S.weighted_best_of_n(["1", "2"], [0.5, 0.5]).answer == "1"  # tie: first seen
    assert S.weighted_best_of_n(["1", "2", "2"], [1.0, 0.5, 0.5]).answer == "1"  # exact tie of sums


def test_oracle_and_subset_accuracy():
    assert S.oracle([False, True]) and not S.oracle([False, False])
    correct = np.array([True, False, False, False])
    acc = S.subset_accuracy(lambda idx: bool(correct[idx].any()), 4, [1, 2, 4])
    assert acc == {1: 0.25, 2: 0.5, 4: 1.0}


@pytest.mark.parametrize("bad", [[], ])
def test_empty_candidates(bad):
    for fn in (S.majority, S.oracle):
        with pytest.raises(ValueError, match="N=0"):
            fn(bad)
    with pytest.raises(ValueError, match="N=0"):
        S.best_of_n(bad, [])
    with pytest.raises(ValueError, match="shape"):
        S.weighted_best_of_n(["1"], [0.1, 0.2])
    with pytest.raises(ValueError, match="N=0"):
        S.subset_accuracy(lambda i: True, 4, [0])


def test_aggregations_by_hand_and_numpy_twin():
    scores = jnp.array([[0.9, 0.5, 0.8, 0.3], [0.2, 0.7, 0.1, 0.6], [0.4, 0.4, 0.4, 0.4]])
    mask = jnp.array([[True, True, True, False], [False, True, False, True], [False, False, False, False]])
    expect = {"last": [0.8, 0.6, 0.0], "min": [0.5, 0.6, 0.0], "prod": [0.36, 0.42, 0.0],
              "mean": [2.2 / 3, 0.65, 0.0]}
    for how, e in expect.items():
        np.testing.assert_allclose(aggregate(scores, mask, how), e, rtol=1e-6)
    rng = np.random.default_rng(0)
    s = rng.uniform(0.01, 1, (6, 9))
    m = rng.random((6, 9)) < 0.5
    for how in expect:
        got = np.asarray(aggregate(jnp.asarray(s), jnp.asarray(m), how))
        want = [aggregate_steps(s[i][m[i]], how) for i in range(6)]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="aggregation='max'"):
        aggregate(scores, mask, "max")


def test_auroc_matches_pairwise_count_with_ties():
    from ttc_jax.search.diagnostics import auroc

    rng = np.random.default_rng(0)
    s = np.round(rng.random(300), 1)  # many ties
    y = rng.random(300) < 0.3
    pos, neg = s[y], s[~y]
    want = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert auroc(s, y) == pytest.approx(want, abs=1e-12)
    assert auroc([0.1, 0.9], [0, 1]) == 1.0 and auroc([0.2, 0.2], [0, 1]) == 0.5
    assert auroc([0.1, 0.2], [1, 1]) is None
    with pytest.raises(ValueError, match="equal counts"):
        auroc([0.1], [0, 1])
