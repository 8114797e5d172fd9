"""Accuracy against N for every selection / search strategy on a verifiable task, plus diagnostics.

Pool strategies (majority, best-of-N with PRM last / min / prod, weighted best-of-N, ORM, oracle
pass@N) share one pool of N_max samples per problem: accuracy at N is the mean over the N_max / N
disjoint groups of N (oracle: the unbiased pass@N estimator). Beam search and DVTS run per N.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ttc_jax.scaling.passk import mean_pass_at_k
from ttc_jax.search import diagnostics as D
from ttc_jax.search import selection as S
from ttc_jax.search import tree
from ttc_jax.search.lm import Policy, RewardScorer, aggregate_pool
from ttc_jax.tasks import arithmetic as A

FORMAT = "ttc-jax.best-of-n/1"
from ttc_jax.search.selection import POOL_STRATEGIES, SEARCH_STRATEGIES, STRATEGIES  # noqa: F401


def check_ns(ns: Sequence[int]) -> list[int]:
    ns = list(ns)
    if not ns:
        raise ValueError("ns is empty; expected at least one N")
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"N={n!r}; expected integers >= 1")
    return sorted(set(int(n) for n in ns))


def answer_of(completion: str, finished: bool = True) -> str | None:
    return A.normalise_answer(A.final_answer(completion)) if finished else None


def evaluate_level(policy: Policy, prm: RewardScorer | None, orm: RewardScorer | None, problems: Sequence[A.Problem],
                   *, ns: Sequence[int], strategies: Sequence[str], search_ns: Sequence[int] = (), m: int = 4,
                   search_problems: int | None = None, rng: np.random.Generator,
                   progress: Callable[[str], None] = lambda s: None) -> dict:
    """Accuracy per strategy and N on `problems` (one difficulty level), and diagnostics at N_max."""
    ns = check_ns(ns)
    bad = set(strategies) - set(STRATEGIES)
    if bad:
        raise ValueError(f"strategies {sorted(bad)} unknown; expected some of {STRATEGIES}")
    needs_prm = {s for s in strategies if "prm" in s or s in SEARCH_STRATEGIES}
    if needs_prm and prm is None:
        raise ValueError(f"strategies {sorted(needs_prm)} need a PRM; none given")
    if "best_of_n_orm" in strategies and orm is None:
        raise ValueError("strategy 'best_of_n_orm' needs an ORM; none given")
    n_max, P = ns[-1], len(problems)
    prompts = [q.prompt for q in problems]
    truth = [str(q.answer) for q in problems]
    t0 = time.time()
    texts, fins, toks = policy.sample_pool(prompts, n_max, rng)
    timing = {"sample_s": time.time() - t0}
    progress(f"sampled {P}x{n_max}")
    answers = [[answer_of(c, f) for c, f in zip(row, frow)] for row, frow in zip(texts, fins)]
    correct = np.array([[a == t for a in row] for row, t in zip(answers, truth)])
    agg, step_scores, step_mask_ = {}, None, None
    if prm is not None:
        t1 = time.time()
        step_scores, step_mask_ = prm.score_pool(toks, prompts)
        for how in ("last", "min", "prod", "mean"):
            agg[how] = aggregate_pool(step_scores, step_mask_, how)
        timing["prm_s"] = time.time() - t1
        progress("PRM scored")
    orm_scores = None
    if orm is not None and "best_of_n_orm" in strategies:
        t1 = time.time()
        orm_scores = orm.score_pool(toks, prompts)
        timing["orm_s"] = time.time() - t1
        progress("ORM scored")

    def rule(name: str, p: int) -> Callable[[np.ndarray], bool]:
        ans = answers[p]

        def pick(idx):
            a = [ans[i] for i in idx]
            if name == "majority":
                sel = S.majority(a)
            elif name.startswith("best_of_n_prm_"):
                sel = S.best_of_n(a, agg[name.rsplit("_", 1)[1]][p, idx])
            elif name == "weighted_best_of_n_prm":
                sel = S.weighted_best_of_n(a, agg["last"][p, idx])
            elif name == "best_of_n_orm":
                sel = S.best_of_n(a, orm_scores[p, idx])
            else:
                raise AssertionError(name)
            return sel.answer == truth[p]
        return pick

    acc: dict[str, dict[int, float]] = {}
    for name in strategies:
        if name in SEARCH_STRATEGIES:
            continue
        if name == "oracle":
            acc[name] = dict(zip(ns, mean_pass_at_k(np.full(P, n_max), correct.sum(1), ns).tolist()))
            continue
        per = [S.subset_accuracy(rule(name, p), n_max, ns) for p in range(P)]
        acc[name] = {n: float(np.mean([d[n] for d in per])) for n in ns}

    search_P = min(P, search_problems or P)
    for name in strategies:
        if name not in SEARCH_STRATEGIES:
            continue
        fn = tree.beam_search if name == "beam_search" else tree.dvts
        sub = prompts[:search_P]
        expand = lambda pids, pre, r, g: policy.expand([sub[i] for i in pids], pre, r, g)
        score = lambda pids, comps: prm.score_steps([sub[i] for i in pids], comps)
        acc[name] = {}
        for n in search_ns:
            t1 = time.time()
            res = fn(search_P, expand, score, answer_of, n=n, m=m, max_steps=max(len(q.ops) for q in problems) + 2,
                     rng=rng, aggregation="last", select="weighted")
            acc[name][n] = float(np.mean([r.selection.answer == truth[i] for i, r in enumerate(res)]))
            timing[f"{name}_{n}_s"] = time.time() - t1
            progress(f"{name} N={n}")

    diag = D.pool_diagnostics(texts, toks, answers, correct, agg, step_scores, step_mask_,
                              [[A.exact_step_labels(q.prompt, c) for c in row] for q, row in zip(problems, texts)])
    if orm_scores is not None:
        diag["auroc_orm"] = D.auroc(orm_scores, correct)
        diag["selection_orm"] = D.selection_accuracy(orm_scores, correct)
    return {"accuracy": {k: {str(n): v for n, v in d.items()} for k, d in acc.items()},
            "num_problems": P, "num_search_problems": search_P if set(strategies) & set(SEARCH_STRATEGIES) else 0,
            "n_max": n_max, "single_sample_accuracy": float(correct.mean()),
            "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
            "mean_completion_tokens": float(np.mean([[len(c) + 1 for c in row] for row in texts])),
            "diagnostics": diag, "timing": timing}
