"""Step-level search guided by a process reward model: beam search and DVTS (with optional lookahead).

Written against two small interfaces so they run with any policy / scorer (tests use toy ones):

    expand(prompt_ids: list[int], prefixes: list[str], rng: np.random.Generator, greedy: bool)
        -> list[tuple[str, bool]]      # one next step per row (its text, whether the completion ended)
    score(prompt_ids: list[int], completions: list[str]) -> list[list[float]]   # per-step scores

All prompts advance together, so every expand / score call is one batch over prompts x beams.

- Beam search (N beams, width M): each round, every active beam takes one step; finished beams
  are set aside; the N / M best unfinished ones survive and each is expanded M times next round
  (N rows again). Stops when a prompt has N finished beams, none active, or after `max_steps`.
- DVTS (diverse verifier tree search): N / M independent subtrees; each round a subtree's current
  prefix is expanded M times and the best child kept (greedy within the subtree).
- lookahead k: a child is ranked by the score of its prefix rolled out k more greedy steps (the
  child itself is kept, not the roll-out), as in search-and-learn.

Each returns, per prompt, a `SearchResult`: candidates, their aggregated scores, and the chosen
answer (`best_of_n` or `weighted_best_of_n` over the candidates' answers).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from ttc_jax.nn.prm import AGGREGATIONS
from ttc_jax.search.selection import Selection, best_of_n, weighted_best_of_n

Expander = Callable[[list, list, np.random.Generator, bool], list]
Scorer = Callable[[list, list], list]


@dataclasses.dataclass(frozen=True)
class SearchResult:
    candidates: tuple[str, ...]
    finished: tuple[bool, ...]
    scores: np.ndarray  # aggregated score per candidate
    selection: Selection


def aggregate_steps(step_scores: Sequence[float], how: str) -> float:
    """NumPy twin of `ttc_jax.nn.prm.aggregate` for one candidate (0 without steps)."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation={how!r}; expected one of {AGGREGATIONS}")
    s = np.asarray(step_scores, np.float64)
    if s.size == 0:
        return 0.0
    return float({"last": s[-1], "min": s.min(), "prod": s.prod(), "mean": s.mean()}[how])


def check_width(n: int, m: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"N={n!r}; expected an int >= 1")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"M={m!r}; expected an int >= 1")
    if n % m:
        raise ValueError(f"M={m} does not divide N={n}; expected N a multiple of the beam width M")


def _rank_scores(prompt_ids, children, finished, expand, score, aggregation, lookahead, rng) -> list[float]:
    """Aggregated score of each child, after rolling unfinished ones out `lookahead` greedy steps."""
    texts, done = list(children), list(finished)
    for _ in range(lookahead):
        rows = [i for i, d in enumerate(done) if not d]
        if not rows:
            break
        steps = expand([prompt_ids[i] for i in rows], [texts[i] for i in rows], rng, True)
        for i, (s, fin) in zip(rows, steps):
            texts[i] += s
            done[i] = fin
    return [aggregate_steps(s, aggregation) for s in score(list(prompt_ids), texts)]


def _finish(cands: list[tuple[str, bool, float]], answer_fn, select: str) -> SearchResult:
    texts = tuple(c[0] for c in cands)
    scores = np.array([c[2] for c in cands], np.float64)
    answers = [answer_fn(t) if f else None for t, f, _ in cands]
    sel = (weighted_best_of_n if select == "weighted" else best_of_n)(answers, scores)
    return SearchResult(texts, tuple(c[1] for c in cands), scores, sel)


def _check_common(n_prompts, aggregation, select, max_steps, lookahead):
    if n_prompts < 1:
        raise ValueError(f"n_prompts={n_prompts}; expected >= 1")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}; expected one of {AGGREGATIONS}")
    if select not in ("best", "weighted"):
        raise ValueError(f"select={select!r}; expected 'best' or 'weighted'")
    if max_steps < 1 or lookahead < 0:
        raise ValueError(f"max_steps={max_steps}, lookahead={lookahead}; expected max_steps >= 1, lookahead >= 0")


def beam_search(n_prompts: int, expand: Expander, score: Scorer, answer_fn: Callable[[str], str | None], *,
                n: int, m: int, max_steps: int, rng: np.random.Generator, aggregation: str = "last",
                lookahead: int = 0, select: str = "best") -> list[SearchResult]:
    """Step-level beam search with N beams of width M for every prompt (see the module docstring)."""
    check_width(n, m)
    _check_common(n_prompts, aggregation, select, max_steps, lookahead)
    active = [[""] * n for _ in range(n_prompts)]
    done: list[list[tuple[str, bool, float]]] = [[] for _ in range(n_prompts)]
    last: list[list[tuple[str, bool, float]]] = [[] for _ in range(n_prompts)]
    for _ in range(max_steps):
        rows = [(p, pre) for p in range(n_prompts) for pre in active[p]]
        if not rows:
            break
        pids = [p for p, _ in rows]
        steps = expand(pids, [pre for _, pre in rows], rng, False)
        children = [pre + s for (_, pre), (s, _) in zip(rows, steps)]
        fins = [f for _, f in steps]
        ranks = _rank_scores(pids, children, fins, expand, score, aggregation, lookahead, rng)
        by_prompt: list[list[tuple[str, bool, float]]] = [[] for _ in range(n_prompts)]
        for p, c, f, r in zip(pids, children, fins, ranks):
            (done[p] if f else by_prompt[p]).append((c, f, r))
        for p in range(n_prompts):
            if not active[p]:
                continue
            alive = sorted(by_prompt[p], key=lambda c: -c[2])[: n // m]  # stable: ties keep expansion order
            last[p] = alive
            active[p] = [] if len(done[p]) >= n else [c[0] for c in alive for _ in range(m)]
    out = []
    for p in range(n_prompts):
        cands = done[p] + ([] if len(done[p]) >= n else [c for c in last[p] if c not in done[p]])
        if not cands:
            cands = [("", False, 0.0)]
        out.append(_finish(cands, answer_fn, select))
    return out


def dvts(n_prompts: int, expand: Expander, score: Scorer, answer_fn: Callable[[str], str | None], *,
         n: int, m: int, max_steps: int, rng: np.random.Generator, aggregation: str = "last",
         lookahead: int = 0, select: str = "best") -> list[SearchResult]:
    """Diverse verifier tree search: N / M subtrees per prompt, each greedy over M expansions per step."""
    check_width(n, m)
    _check_common(n_prompts, aggregation, select, max_steps, lookahead)
    trees = [[("", False, 0.0) for _ in range(n // m)] for _ in range(n_prompts)]
    for _ in range(max_steps):
        rows = [(p, t) for p in range(n_prompts) for t in range(n // m) if not trees[p][t][1] for _ in range(m)]
        if not rows:
            break
        pids = [p for p, _ in rows]
        steps = expand(pids, [trees[p][t][0] for p, t in rows], rng, False)
        children = [trees[p][t][0] + s for (p, t), (s, _) in zip(rows, steps)]
        fins = [f for _, f in steps]
        ranks = _rank_scores(pids, children, fins, expand, score, aggregation, lookahead, rng)
        best: dict[tuple[int, int], tuple[str, bool, float]] = {}
        for key, c, f, r in zip(rows, children, fins, ranks):
            if key not in best or r > best[key][2]:
                best[key] = (c, f, r)
        for (p, t), c in best.items():
            trees[p][t] = c
    return [_finish(trees[p], answer_fn, select) for p in range(n_prompts)]
