"""One call that composes the three test-time-compute methods under a FLOP budget per query:
adapt the policy to the input (`ttc_jax.adapt`), sample N candidates, select with a PRM
(`ttc_jax.search`), with N, the selection rule and the adaptation steps chosen per query from measured
curves and fitted gains (`ttc_jax.scaling`), and a FLOP ledger of what ran.

    pipe = Pipeline(policy, codec, answer_fn, curves, prm=prm, bins=DifficultyBins.calibrate(...),
                    gains={"hard": AdaptationGain(...)}, config=PipelineConfig(probe_n=4))
    sol = pipe.solve(prompt, budget=2e9, key=jax.random.key(0), adapt_prefix=None)
    sol.answer, sol.choice (strategy, n, steps), sol.bin, sol.ledger.by_component()

`ttc solve` is the command line; `ttc_jax.pipeline.xla.ledger_xla` recounts a ledger with XLA.
"""

from ttc_jax.pipeline.core import Pipeline, PipelineConfig, Solution
from ttc_jax.pipeline.ledger import COMPONENTS, FlopLedger
from ttc_jax.pipeline.plan import EXECUTABLE, Choice, DifficultyBins, choose_pool

__all__ = ["COMPONENTS", "EXECUTABLE", "Choice", "DifficultyBins", "FlopLedger", "Pipeline", "PipelineConfig",
           "Solution", "choose_pool"]
