"""Choosing one answer among N candidates: majority, best-of-N, weighted best-of-N, oracle pass@N.

Pure functions on one prompt's candidates: `answers` are normalised final answers (None when a
candidate has none; it never wins a vote), `scores` aggregated reward-model scores. Ties break
towards the lowest candidate index (for answers: the answer whose first candidate comes first),
so results are deterministic. Each returns a `Selection` with the chosen answer, the index of a
candidate that gives it, and the per-candidate scores the rule used.

`subset_accuracy` turns a pool of N_max candidates per prompt into accuracy at every N <= N_max by
averaging the rule over the N_max / N disjoint groups of N candidates.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

# strategy names of the best-of-N evaluation (`ttc best-of-n`)
POOL_STRATEGIES = ("majority", "best_of_n_prm_last", "best_of_n_prm_min", "best_of_n_prm_prod",
                   "weighted_best_of_n_prm", "best_of_n_orm", "oracle")
SEARCH_STRATEGIES = ("beam_search", "dvts")
STRATEGIES = POOL_STRATEGIES + SEARCH_STRATEGIES


@dataclasses.dataclass(frozen=True)
class Selection:
    answer: str | None
    index: int  # a candidate with that answer (-1 when no candidate has one)
    scores: np.ndarray  # per candidate: the score the rule ranked by (votes, reward, summed reward)


def _check(answers, scores=None) -> int:
    n = len(answers)
    if n < 1:
        raise ValueError(f"N={n} candidates; expected N >= 1")
    if scores is not None and np.shape(scores) != (n,):
        raise ValueError(f"scores has shape {np.shape(scores)}; expected ({n},) (one per candidate)")
    return n


def _by_answer(answers: Sequence[str | None], weights: np.ndarray) -> Selection:
    """Sum `weights` per answer; the largest total wins, ties to the answer seen first."""
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (a, w) in enumerate(zip(answers, weights)):
        if a is None:
            continue
        totals[a] = totals.get(a, 0.0) + float(w)
        first.setdefault(a, i)
    per_candidate = np.array([totals.get(a, 0.0) if a is not None else 0.0 for a in answers])
    if not totals:
        return Selection(None, -1, per_candidate)
    best = max(totals, key=lambda a: (totals[a], -first[a]))
    return Selection(best, first[best], per_candidate)


def majority(answers: Sequence[str | None]) -> Selection:
    """The most frequent answer (self-consistency)."""
    _check(answers)
    return _by_answer(answers, np.ones(len(answers)))


def weighted_best_of_n(answers: Sequence[str | None], scores) -> Selection:
    """The answer with the largest summed reward over the candidates that give it."""
    _check(answers, scores)
    return _by_answer(answers, np.asarray(scores, np.float64))


def best_of_n(answers: Sequence[str | None], scores) -> Selection:
    """The answer of the highest-scoring candidate (argmax, first on ties)."""
    _check(answers, scores)
    s = np.asarray(scores, np.float64)
    i = int(np.argmax(s))
    return Selection(answers[i], i, s)


def oracle(correct: Sequence[bool]) -> bool:
    """pass@N: whether any candidate is correct (a diagnostic upper bound; needs the verifier)."""
    _check(correct)
    return bool(np.any(correct))


def subset_accuracy(rule: Callable[[np.ndarray], bool], n_max: int, ns: Sequence[int]) -> dict[int, float]:
    """Accuracy at each N: mean of rule(idx) over the n_max // N disjoint index groups of size N.

    `rule(idx)` applies a selection to the candidates `idx` of one prompt and says if it was right.
    """
    out = {}
    for n in ns:
        if n < 1 or n > n_max:
            raise ValueError(f"N={n}; expected 1 <= N <= pool size {n_max}")
        groups = np.arange(n_max // n * n).reshape(-1, n)
        out[n] = float(np.mean([rule(g) for g in groups]))
    return out
