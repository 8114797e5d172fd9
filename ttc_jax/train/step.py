"""The functional core of training: masked next-token loss, the (accumulating) train step, eval step.

Parameters are a pure pytree (`nnx.to_pure_dict` of the model state); the model is rebuilt inside
the traced function with `nnx.merge`. Gradient accumulation is a `lax.scan` over micro-batches of
the *summed* masked loss, divided once by the step's token count, so a step's gradient does not
depend on how the batch is split (up to float reassociation).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from ttc_jax.train.config import TrainConfig


class TrainState(NamedTuple):
    """Everything a step updates and a checkpoint stores (besides the data iterator position)."""

    step: Array  # int32 scalar: optimizer steps done
    params: Any
    opt_state: Any
    rng: Array  # uint32 key data


def token_losses(logits: Float[Array, "B T V"], targets: Int[Array, "B T"]) -> Float[Array, "B T"]:
    """Cross-entropy per position, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _inner_loss_summary(stats: dict) -> dict:
    """Per TTT layer, the inner loss before and after the update, averaged over batch, heads, mini-batches."""
    out = {}
    for i, st in stats.items():
        out[f"ttt/{i}/loss_before"] = jnp.mean(st["loss_before"])
        out[f"ttt/{i}/loss_after"] = jnp.mean(st["loss_after"])
    return out


def summed_loss(params, graphdef, batch: dict, ttt_lr_mult, with_stats: bool):
    """(sum of masked token losses, (mask sum, inner-loss summary))."""
    model = nnx.merge(graphdef, params)
    out = model(batch["inputs"], return_ttt_stats=with_stats, ttt_lr_mult=ttt_lr_mult)
    logits, stats = (out if with_stats else (out, {}))
    mask = batch["mask"].astype(jnp.float32)
    total = jnp.sum(token_losses(logits, batch["targets"]) * mask)
    return total, (jnp.sum(mask), jax.lax.stop_gradient(_inner_loss_summary(stats)))


def make_train_step(graphdef, tx: optax.GradientTransformation, tcfg: TrainConfig, *, lr_mult_fn,
                    schedule, with_stats: bool, loss_fn=summed_loss):
    """step(state, batch) -> (state, metrics); batch arrays [batch_size, T]. Pure; jit it outside.

    `loss_fn(params, graphdef, batch, ttt_lr_mult, with_stats)` -> (summed loss, (weight sum, stats)):
    `summed_loss` (next-token), or a reward model's summed BCE (`ttc_jax.train.reward.summed_bce`)."""
    n_micro = tcfg.grad_accum
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict):
        mult = lr_mult_fn(state.step)
        if n_micro == 1:
            (tot, (count, stats)), grads = grad_fn(state.params, graphdef, batch, mult, with_stats)
        else:
            micro = jax.tree.map(lambda a: a.reshape(n_micro, a.shape[0] // n_micro, *a.shape[1:]), batch)

            def body(carry, mb):
                g_acc, tot_acc, cnt_acc = carry
                (tot, (cnt, st)), g = grad_fn(state.params, graphdef, mb, mult, with_stats)
                return (jax.tree.map(jnp.add, g_acc, g), tot_acc + tot, cnt_acc + cnt), st

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, tot, count), stats = jax.lax.scan(body, (zeros, 0.0, 0.0), micro)
            stats = jax.tree.map(lambda a: jnp.mean(a, axis=0), stats)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = tot / denom
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
                   "tokens": count, "ttt_lr_mult": jnp.asarray(mult, jnp.float32), **stats}
        return TrainState(state.step + 1, params, opt_state, state.rng), metrics

    return step


def make_eval_step(graphdef):
    """eval(params, batch) -> (sum of losses per position [T], mask count per position [T])."""

    def evaluate(params, batch):
        model = nnx.merge(graphdef, params)
        logits = model(batch["inputs"])
        mask = batch["mask"].astype(jnp.float32)
        losses = token_losses(logits, batch["targets"]) * mask
        return jnp.sum(losses, axis=0), jnp.sum(mask, axis=0)

    return evaluate


def init_state(graphdef_params, tx, seed: int) -> TrainState:
    _, params = graphdef_params
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      jax.random.key_data(jax.random.key(seed)))
