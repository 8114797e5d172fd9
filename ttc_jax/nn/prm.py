"""Process (PRM) and outcome (ORM) reward models: a sigmoid value head on a HybridLM backbone.

`RewardModel` maps tokens [B, T] to a score in (0, 1) at every position; which positions count is
the caller's choice, made with pure helpers:

- PRM: the step-separator tokens of the completion (`step_mask`), one score per step, trained with
  binary cross-entropy on per-step labels (exact 0/1 or Monte-Carlo fractions);
- ORM: the completion's last token only (`last_mask`), trained on final-answer correctness.

`aggregate` reduces step scores to one score per candidate (last / min / prod / mean);
`score_candidates` scores N candidates of P prompts [P, N, T] as one `nnx.vmap`ped call.
The backbone is its own HybridLM (separate weights, e.g. initialised from the policy) or the
policy's own module (shared weights).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.model import HybridLM

AGGREGATIONS = ("last", "min", "prod", "mean")
KINDS = ("prm", "orm")


class RewardModel(nnx.Module):
    """Value head (RMS-normed final hidden state -> Linear(D, 1) -> sigmoid) on a HybridLM."""

    def __init__(self, cfg: ModelConfig, *, separator: int, kind: str = "prm", rngs: nnx.Rngs,
                 backbone: HybridLM | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
        if not 0 <= separator < cfg.vocab_size:
            raise ValueError(f"separator={separator}; expected a token id in [0, {cfg.vocab_size})")
        if backbone is not None and backbone.cfg.vocab_size != cfg.vocab_size:
            raise ValueError(f"backbone vocab_size={backbone.cfg.vocab_size}; expected {cfg.vocab_size}")
        self.cfg = cfg
        self.separator = int(separator)
        self.kind = kind
        self.backbone = backbone if backbone is not None else HybridLM(cfg, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, 1, kernel_init=nnx.initializers.normal(cfg.init_std),
                               param_dtype=jnp.float32, rngs=rngs)

    def logits(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T"]:
        """Pre-sigmoid score at every position."""
        _, h = self.backbone(tokens, return_hidden=True)
        return self.head(h)[..., 0]

    def __call__(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T"]:
        """Score in (0, 1) at every position (read at step separators for a PRM, at the end for an ORM)."""
        return jax.nn.sigmoid(self.logits(tokens))

    def check_policy(self, policy_cfg: ModelConfig, separator: int) -> None:
        """Raise ValueError unless this reward model reads the policy's vocabulary and step separator."""
        if policy_cfg.vocab_size != self.cfg.vocab_size:
            raise ValueError(f"reward model vocab_size={self.cfg.vocab_size} does not match the policy's "
                             f"vocab_size={policy_cfg.vocab_size}")
        if int(separator) != self.separator:
            raise ValueError(f"reward model separator={self.separator} does not match the task's separator={separator}")


# --- positions and aggregation (pure) ---------------------------------------------

def step_mask(tokens: Int[Array, "... T"], start: Int[Array, "..."], separator: int) -> Bool[Array, "... T"]:
    """True at separator tokens at or after `start` (the completion's first position)."""
    t = jnp.arange(tokens.shape[-1])
    return (tokens == separator) & (t >= jnp.asarray(start)[..., None])


def last_mask(end: Int[Array, "..."], length: int) -> Bool[Array, "... T"]:
    """True only at position `end` (the completion's last token)."""
    return jnp.arange(length) == jnp.asarray(end)[..., None]


def aggregate(scores: Float[Array, "... S"], mask: Bool[Array, "... S"], how: str) -> Float[Array, "..."]:
    """One score per candidate from its masked step scores; a candidate without steps scores 0.

    last: the final step's score; min: the weakest step; prod: the product (probability that every
    step is right); mean: the average.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation={how!r}; expected one of {AGGREGATIONS}")
    scores = jnp.asarray(scores, jnp.float32)
    mask = jnp.asarray(mask, bool)
    count = mask.sum(-1)
    if how == "last":
        idx = jnp.where(mask, jnp.arange(mask.shape[-1]), -1).max(-1)
        out = jnp.take_along_axis(scores, jnp.maximum(idx, 0)[..., None], -1)[..., 0]
    elif how == "min":
        out = jnp.where(mask, scores, jnp.inf).min(-1)
    elif how == "prod":
        out = jnp.exp(jnp.where(mask, jnp.log(jnp.clip(scores, 1e-30, 1.0)), 0.0).sum(-1))
    else:
        out = jnp.where(mask, scores, 0.0).sum(-1) / jnp.maximum(count, 1)
    return jnp.where(count > 0, out, 0.0)


# --- scoring and training --------------------------------------------------------

@nnx.jit
def score_candidates(model: RewardModel, tokens: Int[Array, "P N T"]) -> Float[Array, "P N T"]:
    """Scores at every position of N candidates per prompt: one call, vmapped over the candidates."""
    per_sample = nnx.vmap(lambda m, x: m(x), in_axes=(None, 1), out_axes=1)
    return per_sample(model, tokens)


def bce_loss(model: RewardModel, tokens: Int[Array, "B T"], labels: Float[Array, "B T"],
             weights: Float[Array, "B T"]) -> Float[Array, ""]:
    """Mean binary cross-entropy of the head's logits against (soft) labels where weights > 0."""
    ce = optax.sigmoid_binary_cross_entropy(model.logits(tokens), labels)
    return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0)


@functools.partial(nnx.jit, donate_argnums=())
def bce_step(model: RewardModel, opt: nnx.Optimizer, tokens, labels, weights):
    loss, grads = nnx.value_and_grad(bce_loss)(model, tokens, labels, weights)
    opt.update(model, grads)
    return loss
