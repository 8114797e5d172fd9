"""benchmarks/adapt_format.py's core: the adaptation prefix's loss mask covers the shifted solutions (and EOS)
only, prompts are left-padded with PAD, and the summary / matched-FLOPs bookkeeping counts what it says."""

from __future__ import annotations


import numpy as np
import pytest
from bench_loader import load

from ttc_jax.tasks import arithmetic as A
from ttc_jax.tasks.formats import SHIFTED



@pytest.fixture(scope="module")
def bench():
    return load("adapt_format")


def test_demo_mask_and_prompts(bench):
    fmt = SHIFTED["marker_numbered"]
    demos = A.sample_problems(7, "hard", 3)
    tok, mask = bench.demo_batch(fmt, demos, 80)
    for row, m, q in zip(tok, mask, demos):
        ids = [int(t) for t in row if t != A.PAD]
        assert A.decode(ids + [A.EOS]) == fmt.prompt(q) + fmt.solution(q) and ids[-1] == A.EOS
        targets = [int(row[i + 1]) for i in np.flatnonzero(m)]  # position t predicts token t + 1
        assert A.decode(targets) == fmt.solution(q) and targets[-1] == A.EOS
    x = bench.prompt_batch(fmt, demos)
    assert x.shape == (3, bench.PROMPT_LEN) and all(A.decode(r) == fmt.prompt(q) for r, q in zip(x, demos))


def test_summary_and_matched_flops(bench):
    rng = np.random.default_rng(0)
    strict = {s: rng.random((6, 4)) < 0.3 + 0.1 * s for s in (0, 1)}
    run = {s: {"strict": strict[s], "lenient": strict[s], "truth": ["5"] * 6, "length": 10.0, "loss": 1.0,
               "answers": [["5" if c else "7" for c in row] for row in strict[s]]} for s in (0, 1)}
    summ = bench.summarise([run], [0, 1], [1, 2, 4])
    for s in (0, 1):
        assert summ[s]["p"] == pytest.approx(strict[s].mean()) and summ[s]["majority"][1] == pytest.approx(
            strict[s].mean())
        assert summ[s]["pass"][4] == pytest.approx(strict[s].any(1).mean())
    level = {"curve": {str(s): v for s, v in summ.items()}, "sample_flops": 10.0, "adapt_flops": {"0": 1.0, "1": 50.0}}
    pts = {(p["steps"], p["n"]): p for p in bench.matched(level, [0, 1], [1, 2, 4])}
    assert pts[(1, 2)]["flops"] == 70.0 and pts[(1, 2)]["flops_per_sample_copies"] == 120.0
