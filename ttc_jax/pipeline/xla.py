"""XLA's own count of a ledger: each entry's computation recompiled at its executed shapes and counted with
`cost_analysis`, times how often it ran.

XLA counts a while/scan body once whatever its trip count, so each loop body is compiled alone (one
decode step, one adaptation step) and multiplied by its executed trip count, and the model is rebuilt
with `scan_layers=False` (the same computation with the layers unrolled). FLOPs do not depend on the
weights' values, so random weights of the same configuration are used. TTT layers scan over mini-batches:
their counts are exact only for sequences of at most one mini-batch (see tests/scaling).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ttc_jax.adapt.loop import next_token_loss
from ttc_jax.generate.state import _set_positions
from ttc_jax.nn.model import HybridLM
from ttc_jax.pipeline.ledger import FlopLedger


def _flops(f, *args) -> float:
    cost = jax.jit(f).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def _unrolled(cfg: Any) -> tuple[Any, Any, Any]:
    model = HybridLM(dataclasses.replace(cfg, scan_layers=False), rngs=nnx.Rngs(0))
    return nnx.split(model, nnx.Param, ...)


@functools.lru_cache(maxsize=64)  # one compilation per configuration and shape
def prefill_xla(cfg, *, rows: int, prompt_len: int, cache_size: int) -> float:
    g, p, r = _unrolled(cfg)
    x = jnp.zeros((rows, prompt_len), jnp.int32)
    return _flops(lambda p, x: nnx.merge(g, p, r)(x, cache=nnx.merge(g, p, r).init_cache(rows, cache_size))[0], p, x)


@functools.lru_cache(maxsize=64)
def decode_step_xla(cfg, *, rows: int, start: int, cache_size: int) -> float:
    g, p, r = _unrolled(cfg)
    model = nnx.merge(g, p, r)
    cache = model.init_cache(rows, cache_size)
    tok = jnp.zeros((rows, 1), jnp.int32)

    def step(p, cache, tok):
        m = nnx.merge(g, p, r)
        return m(tok, cache=_set_positions(cache, start, cfg.mini_batch_size))

    return _flops(step, p, cache, tok)


@functools.lru_cache(maxsize=64)
def adapt_xla(cfg, *, steps: int, prefix_len: int) -> float:
    """One copy: `steps` SGD steps (value and gradient of the next-token loss, update) + the check forward."""
    g, p, r = _unrolled(cfg)
    tok = jnp.zeros((1, prefix_len), jnp.int32)
    w = jnp.ones((1, prefix_len), jnp.float32)
    loss = lambda p: next_token_loss(nnx.merge(g, p, r)(tok[:, :-1]), tok, w)

    def step(p):
        v, grads = jax.value_and_grad(loss)(p)
        return v, optax.apply_updates(p, jax.tree.map(lambda x: -1e-3 * x, grads))

    return steps * _flops(step, p) + _flops(loss, p)


@functools.lru_cache(maxsize=64)
def prm_xla(cfg, *, rows: int, length: int) -> float:
    from ttc_jax.nn.prm import RewardModel
    rm = RewardModel(dataclasses.replace(cfg, scan_layers=False), separator=0, rngs=nnx.Rngs(0))
    g, p, r = nnx.split(rm, nnx.Param, ...)
    x = jnp.zeros((rows, length), jnp.int32)
    return _flops(lambda p, x: nnx.merge(g, p, r)(x), p, x)


def ledger_xla(ledger: FlopLedger, policy_cfg, prm_cfg=None) -> dict[str, float]:
    """{component: XLA FLOPs} of the computations in `ledger` (same shapes and trip counts)."""
    out = {"adaptation": 0.0, "prefill": 0.0, "decode": 0.0, "prm": 0.0}
    for e in ledger.entries:
        s = e.spec
        if e.component == "prefill":
            out["prefill"] += prefill_xla(policy_cfg, **s)
        elif e.component == "decode":
            if s["steps"]:
                out["decode"] += s["steps"] * decode_step_xla(policy_cfg, rows=s["rows"], start=s["start"],
                                                              cache_size=s["cache_size"])
        elif e.component == "adaptation":
            out["adaptation"] += s["copies"] * adapt_xla(policy_cfg, steps=s["steps"], prefix_len=s["prefix_len"])
        elif e.component == "prm":
            if prm_cfg is None:
                raise ValueError("the ledger has PRM entries; expected prm_cfg")
            out["prm"] += prm_xla(prm_cfg, **s)
    return out
