"""Test-time adaptation: train a copy of a model's weights on the input itself (dynamic evaluation).

    result = ttt_adapt(model, prefix, steps=4, lr=1e-3, scope="all"|"lora"|"last_k"|"norms"|"ttt_w0",
                       optimizer="sgd"|"adam"|optax transform, state=None|previous.state, key=..., ...)
    result.model, result.losses, result.drift, result.rolled_back, result.state
    many = ttt_adapt_many(model, prefix, n=8, steps=[...], lr=..., key=...)   # vmapped copies; many.copy(i)
    samples = sample_adapted(many, prompts, n_per_copy=m, max_new_tokens=L, rng=key)   # Samples [P, N * m]

Modules: `loop` (the pure scan with the NaN/inf guard), `scopes` (which parameters), `lora`
(adapters as pure functions), `params` (Flax plumbing), `api`, `sample` (vmapped sampling from copies).
"""

from ttc_jax.adapt.api import OPTIMIZERS, ORDERS, AdaptResult, AdaptState, copy_keys, ttt_adapt, ttt_adapt_many
from ttc_jax.adapt.loop import next_token_loss
from ttc_jax.adapt.sample import sample_adapted
from ttc_jax.adapt.scopes import LORA_TARGETS, SCOPES

__all__ = ["LORA_TARGETS", "OPTIMIZERS", "ORDERS", "SCOPES", "AdaptResult", "AdaptState", "copy_keys",
           "next_token_loss", "sample_adapted", "ttt_adapt", "ttt_adapt_many"]
