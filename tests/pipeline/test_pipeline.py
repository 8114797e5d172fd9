"""The composed pipeline on a small random policy and PRM: the FLOP ledger against XLA's own count of the
same computations (within 10%), the budget respected, the selection rule applied, clear errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.model import HybridLM
from ttc_jax.nn.prm import RewardModel
from ttc_jax.pipeline import DifficultyBins, Pipeline, PipelineConfig
from ttc_jax.pipeline.xla import ledger_xla
from ttc_jax.scaling.allocate import AdaptationGain
from ttc_jax.scaling.curves import curves_from_dict
from ttc_jax.search import selection as SEL
from ttc_jax.search.lm import TextCodec

# widths >= 64 so that XLA's elementwise ops (which the analytic count leaves out) stay a few percent
CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=2, ffn_dim=128,
                  layer_pattern=("attention", "ttt_linear"), backbone="transformer", mini_batch_size=16,
                  max_seq_len=64, remat_group=0)
CODEC = TextCodec(sep=10, eos=0, pad=1)
CURVES = curves_from_dict({"bins": ["easy", "hard"], "strategies": {
    name: {"cost": {"fixed": 0, "per_sample": 1}, "curves": {
        "easy": {"n": [1, 2, 4], "accuracy": [0.5, 0.6, acc4]}, "hard": {"n": [1, 2, 4], "accuracy": [0.1, 0.2, acc4 / 2]}}}
    for name, acc4 in (("majority", 0.7), ("weighted_best_of_n_prm", 0.8))}})
PROMPT = "Q:3+4\n"  # byte 10 (newline) is the separator


def answer_fn(text: str):
    return text[:1] or None  # a random model rarely writes an answer: its first byte stands in for one


@pytest.fixture(scope="module")
def pipe():
    policy = HybridLM(CFG, rngs=nnx.Rngs(0))
    prm = RewardModel(CFG, separator=CODEC.sep, rngs=nnx.Rngs(1))
    return Pipeline(policy, CODEC, answer_fn, CURVES, prm=prm, bins=DifficultyBins(("easy", "hard"), (0.5,)),
                    gains={"easy": AdaptationGain(0.1, 0.1, 0.9), "hard": AdaptationGain(0.1, 0.1, 0.9)},
                    config=PipelineConfig(probe_n=2, max_new_tokens=8, temperature=1.0, adapt_lr=1e-2,
                                          max_adapt_steps=2))


def _check_against_xla(sol, pipe):
    x = ledger_xla(sol.ledger, CFG, CFG)
    ours = sol.ledger.by_component()
    for c, v in ours.items():
        if v or x[c]:
            assert 0.97 <= x[c] / v <= 1.10, (c, x[c], v)  # XLA >= ours by the elementwise share only
    assert 1.0 <= sum(x.values()) / sol.ledger.total <= 1.10


def test_pool_path_ledger_matches_xla_and_budget(pipe):
    budget = pipe.pool_cost(PROMPT, "weighted_best_of_n_prm", 4) * 1.01  # 4 candidates with the PRM fit
    sol = pipe.solve(PROMPT, budget, key=jax.random.key(0))
    assert sol.choice.n == 4 and sol.choice.steps == 0 and len(sol.candidates) == 4
    assert sol.ledger.total <= budget
    comps = [(e.phase, e.component) for e in sol.ledger.entries]
    # one prefill shared by the probes and the main phase's samples
    assert comps == [("probe", "prefill"), ("probe", "decode"), ("probe", "prm"),
                     ("main", "decode")] + ([("main", "prm")] * ("prm" in sol.choice.strategy))
    # the rule the choice names, applied to the candidates' answers
    if sol.choice.strategy == "majority":
        assert sol.answer == SEL.majority(sol.answers).answer
    _check_against_xla(sol, pipe)


def test_bad_input(pipe):
    one = pipe.sample_cost(PROMPT, 1)
    with pytest.raises(ValueError, match="below the cost of one sample"):
        pipe.solve(PROMPT, one * 0.5, key=jax.random.key(0))
    for bad in (0, -1.0, float("nan"), "1e9"):
        with pytest.raises(ValueError, match="budget="):
            pipe.solve(PROMPT, bad, key=jax.random.key(0))
    with pytest.raises(ValueError, match="adapt_prefix has shape"):
        pipe.solve(PROMPT, 1e12, key=jax.random.key(0), adapt_prefix=[3])
    other = RewardModel(CFG, separator=11, rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match="separator=11 does not match"):
        Pipeline(pipe.policy, CODEC, answer_fn, CURVES, prm=other)
    with pytest.raises(ValueError, match="expected a ttc_jax.nn.prm.RewardModel"):
        Pipeline(pipe.policy, CODEC, answer_fn, CURVES, prm=pipe.policy)
    with pytest.raises(ValueError, match="do not match the curves' bins"):
        Pipeline(pipe.policy, CODEC, answer_fn, CURVES, bins=DifficultyBins(("a", "b"), (0.5,)))
    with pytest.raises(ValueError, match="probe_n"):
        PipelineConfig(probe_n=0)


PREFIX = np.asarray([5, 7, 9, 10, 5, 7, 9, 10, 5, 7, 9, 10, 3], np.int32)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["per_sample", "shared"])
def test_adapted_path_ledger_matches_xla(pipe, mode):
    """per_sample: N copies (ttt_adapt_many + sample_adapted), adaptation counted per copy and step; shared:
    one copy adapted once, N samples from one prefill of it."""
    import dataclasses
    pipe = Pipeline(pipe.policy, CODEC, answer_fn, CURVES, prm=pipe.prm, bins=pipe.bins, gains=pipe.gains,
                    config=dataclasses.replace(pipe.config, adapt_mode=mode))
    sol = pipe.solve(PROMPT, 3e9, key=jax.random.key(1), adapt_prefix=PREFIX)
    assert sol.choice.steps > 0 and len(sol.candidates) == sol.choice.n
    adapt = [e for e in sol.ledger.entries if e.component == "adaptation"]
    assert len(adapt) == 1 and adapt[0].spec["copies"] == (sol.choice.n if mode == "per_sample" else 1)
    assert sol.ledger.total <= 3e9
    _check_against_xla(sol, pipe)


def test_average_budget_plan_spends_more_where_the_curves_gain(pipe):
    """plan_average: the probe always paid (N >= probe_n), the average within budget, the expected accuracy
    at least that of one N for all bins at the same average; solve follows the query's bin allocation."""
    k = pipe.config.probe_n
    cheap, rich = pipe.pool_cost(PROMPT, "majority", 2), pipe.pool_cost(PROMPT, "majority", 4)
    plan = pipe.plan_average((cheap + rich) / 2, PROMPT)
    alloc = {a.bin: a for a in plan.allocations}
    assert all(a.option.n >= k for a in plan.allocations)
    assert plan.cost <= (cheap + rich) / 2 * (1 + 1e-9)
    uniform = np.mean([CURVES.strategies["majority"].curves[b].accuracy[1] for b in ("easy", "hard")])
    assert plan.accuracy >= uniform - 1e-9
    sol = pipe.solve(PROMPT, float("inf"), key=jax.random.key(3), plan=plan)
    a = alloc[sol.bin]
    assert (sol.choice.strategy, sol.choice.n) in {(a.option.strategy, a.option.n)} | (
        {(a.mix.strategy, a.mix.n)} if a.mix is not None else set())
