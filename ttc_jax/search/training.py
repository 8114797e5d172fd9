"""Minimal optax loops: a policy LM on a task's solutions (completion tokens only), and a PRM / ORM
on step-labelled completions (binary cross-entropy at the step separators / the last token)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ttc_jax.nn.model import HybridLM
from ttc_jax.nn.prm import RewardModel, bce_step


def masked_lm_loss(model, tokens, mask):
    """Mean next-token cross-entropy over positions where mask == 1 (mask[t] weights target t+1)."""
    logits = model(tokens[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    m = mask[:, :-1]
    return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)


@nnx.jit
def _lm_step(model, opt, tokens, mask):
    loss, grads = nnx.value_and_grad(masked_lm_loss)(model, tokens, mask)
    opt.update(model, grads)
    return loss


def make_optimizer(model, lr: float, steps: int, warmup: int = 100, weight_decay: float = 0.01):
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, max(steps // 10, 1)), max(steps, 2), lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _loop(step, batches, steps, name, time_limit_s, log_every, log) -> list[tuple[int, float]]:
    """Run `step(batches(i))` for i < steps (or until time_limit_s); returns the (step, EMA loss) history."""
    t0, hist, ema = time.time(), [], None
    for i in range(steps):
        loss = float(step(batches(i)))
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        if i % log_every == 0 or i == steps - 1:
            hist.append((i, ema))
            log(f"step {i} {name} {ema:.4f} ({time.time() - t0:.0f}s)")
        if time_limit_s is not None and time.time() - t0 > time_limit_s:
            log(f"time limit at step {i}")
            hist.append((i, ema))
            break
    return hist


def train_lm(model: HybridLM, batches: Callable[[int], tuple[np.ndarray, np.ndarray]], *, steps: int,
             lr: float = 3e-3, time_limit_s: float | None = None, log_every: int = 50,
             log: Callable[[str], None] = print) -> list[tuple[int, float]]:
    """Train in place on `batches(step) -> (tokens, mask)`; stops early at `time_limit_s`. Returns (step, loss)."""
    opt = make_optimizer(model, lr, steps)
    step = lambda b: _lm_step(model, opt, *(jnp.asarray(a) for a in b))
    return _loop(step, batches, steps, "loss", time_limit_s, log_every, log)


def reward_batch(examples: Sequence[tuple[str, Sequence[str], Sequence[float], bool]], length: int, *,
                 sep: int, eos: int, pad: int, kind: str, rng: np.random.Generator | None = None,
                 max_left_pad: int = 0):
    """(tokens, labels, weights) [B, length] for a PRM or ORM from (prompt, steps, labels, finished).

    Layout as the policy's: PAD on the left, prompt, steps joined by the separator, EOS if finished.
    PRM: step i's label sits at its separator; ORM: the last label (final correctness) at the last token.
    """
    B = len(examples)
    toks = np.full((B, length), pad, np.int32)
    labs = np.zeros((B, length), np.float32)
    wts = np.zeros((B, length), np.float32)
    for i, (prompt, steps, labels, finished) in enumerate(examples):
        p = list(prompt.encode("latin-1"))
        c = list("".join(s + chr(sep) for s in steps).encode("latin-1")) + ([eos] if finished else [])
        ids = p + c
        if len(ids) > length:
            ids, c = ids[-length:], c[-length:]
        room = min(max_left_pad, length - len(ids))
        extra = int(rng.integers(0, room + 1)) if rng is not None and room else 0
        start = length - len(ids) - extra
        toks[i, start:start + len(ids)] = ids
        if kind == "orm":
            if labels:
                labs[i, start + len(ids) - 1] = labels[-1]
                wts[i, start + len(ids) - 1] = 1.0
            continue
        seps = [start + len(p) + j for j, t in enumerate(c) if t == sep]
        for j, lab in zip(seps, labels):
            labs[i, j], wts[i, j] = lab, 1.0
    return toks, labs, wts


def train_reward(model: RewardModel, batches: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                 steps: int, lr: float = 1e-3, time_limit_s: float | None = None, log_every: int = 50,
                 log: Callable[[str], None] = print) -> list[tuple[int, float]]:
    """BCE training in place on `batches(step) -> (tokens, labels, weights)`. Returns (step, loss) history."""
    opt = make_optimizer(model, lr, steps)
    step = lambda b: bce_step(model, opt, *(jnp.asarray(a) for a in b))
    return _loop(step, batches, steps, "bce", time_limit_s, log_every, log)
