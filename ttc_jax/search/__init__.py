"""Selection and search over sampled candidates with reward models.

selection: majority, best_of_n, weighted_best_of_n, oracle, subset_accuracy (pure, one prompt).
tree: beam_search, dvts (+ lookahead) against small expand / score interfaces.
lm: Policy (HybridLM sampling, one step or full completions) and RewardScorer (PRM / ORM) behind them.
training: minimal optax loops for the policy LM and reward models. checkpoint: atomic .npz save / load.
evaluate, diagnostics, plots, cli: `ttc best-of-n`.
"""

from ttc_jax.search.selection import Selection, best_of_n, majority, oracle, subset_accuracy, weighted_best_of_n

__all__ = ["Selection", "best_of_n", "majority", "oracle", "subset_accuracy", "weighted_best_of_n"]
