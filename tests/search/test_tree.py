"""Beam search and DVTS find the known best path with a toy policy and a toy PRM; bad widths."""

import numpy as np
import pytest

from ttc_jax.search.tree import beam_search, check_width, dvts

TARGETS = ["2013", "3102"]  # best path per prompt, one digit per step
DEPTH = 4


def toy_expand(pids, prefixes, rng, greedy):
    """Each step is a uniformly random digit in 0-3 (greedy: '0'); the 4th step ends the completion."""
    out = []
    for pre in prefixes:
        d = "0" if greedy else str(int(rng.integers(4)))
        depth = len(pre) // 2 + 1
        out.append((d + "\n", depth >= DEPTH))
    return out


def toy_score(pids, completions):
    """Step i scores 1 while the prefix matches the prompt's target, then 0 (a perfect PRM)."""
    out = []
    for p, c in zip(pids, completions):
        digits = c.split("\n")[:-1]
        ok = np.cumprod([d == TARGETS[p][i] if i < len(TARGETS[p]) else False for i, d in enumerate(digits)])
        out.append([float(v) for v in ok])
    return out


def answer(c):
    return "".join(c.split("\n"))


@pytest.mark.parametrize("search,n,m", [(beam_search, 32, 4), (dvts, 32, 8)])
def test_search_finds_best_path(search, n, m):
    res = search(2, toy_expand, toy_score, answer, n=n, m=m, max_steps=8, rng=np.random.default_rng(0))
    for p, r in enumerate(res):
        assert r.selection.answer == TARGETS[p]
        assert len(r.candidates) == len(r.scores)
        assert r.scores[r.selection.index] == 1.0
    # sampling the same number of full paths independently hits the target with probability
    # 1 - (1 - 4^-4)^32 = 0.12: the search is what finds it
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(20):
        paths = ["".join(str(int(rng.integers(4))) for _ in range(DEPTH)) for _ in range(n // (m if search is dvts else 1))]
        hits += TARGETS[0] in paths
    assert hits < 10


def test_beam_search_sets_finished_aside_and_lookahead():
    res = beam_search(1, toy_expand, toy_score, answer, n=8, m=2, max_steps=8, rng=np.random.default_rng(1),
                      lookahead=1)
    assert all(res[0].finished) and len(res[0].candidates) >= 8
    res = dvts(1, toy_expand, toy_score, answer, n=8, m=4, max_steps=8, rng=np.random.default_rng(1), lookahead=2)
    assert len(res[0].candidates) == 2


@pytest.mark.parametrize("n,m,msg", [(6, 4, "M=4 does not divide N=6"), (0, 1, "N=0"), (4, 0, "M=0")])
def test_bad_width(n, m, msg):
    with pytest.raises(ValueError, match=msg):
        check_width(n, m)
    for search in (beam_search, dvts):
        with pytest.raises(ValueError, match=msg):
            search(1, toy_expand, toy_score, answer, n=n, m=m, max_steps=3, rng=np.random.default_rng(0))
