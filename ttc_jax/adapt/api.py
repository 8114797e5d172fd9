"""`ttt_adapt` / `ttt_adapt_many`: test-time training of a copy of a HybridLM's weights on a prefix.

The model is split into flat parameters; the scope picks the adapted part (or LoRA factors); the pure
loop of `ttc_jax.adapt.loop` runs all steps in one compiled call (vmapped over copies for
`ttt_adapt_many`). The model passed in is never modified.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from ttc_jax.adapt import lora as L
from ttc_jax.adapt import scopes as S
from ttc_jax.adapt.loop import adapt_loop, next_token_loss
from ttc_jax.adapt.params import Layout, block_layers, split_model
from ttc_jax.nn.model import HybridLM
from ttc_jax.ttt.tracing import is_traced

OPTIMIZERS = ("sgd", "adam")
ORDERS = ("sequential", "random")


@functools.lru_cache(maxsize=None)
def _named_tx(name: str) -> optax.GradientTransformation:
    # cached so that repeated calls hit the compilation cache (a new transform is a new static argument)
    return {"sgd": optax.identity, "adam": optax.scale_by_adam}[name]()


@struct.dataclass
class AdaptState:
    """What carries over between calls: the adapted part (scope arrays, or LoRA factors) and optimizer state."""

    trainable: dict
    opt_state: object


@dataclasses.dataclass(frozen=True)
class _Plan:
    layout: Layout
    selection: tuple  # ((path, first row), ...)
    lora_scale: float | None  # None: not LoRA
    lora_rank: int
    capacity: int  # static buffer length: n_steps <= capacity (powers of two share compilations)
    window: int | None
    order: str


@dataclasses.dataclass(frozen=True)
class AdaptResult:
    """Adapted weights and monitoring. Arrays have a leading copy axis [N] for `ttt_adapt_many`.

    losses [I + 1]: the next-token loss at iteration i = 0 ... I of the weights in force then (i
    accepted updates; I = steps, or the iteration after a rollback; the last is the returned
    weights' loss unless it triggered the rollback); NaN past a copy's last iteration;
    drift [I + 1]: their L2 distance to the original weights (LoRA: of the merged deltas);
    final_drift, steps_done: of the returned weights; rollback_step: -1 none, else the 1-based update
    that went non-finite and was discarded (0: the original weights' loss is not finite).
    """

    layout: Layout
    params: nnx.State
    rest: nnx.State
    state: AdaptState
    losses: jax.Array
    drift: jax.Array
    final_drift: jax.Array
    steps_done: jax.Array
    rollback_step: jax.Array

    @property
    def rolled_back(self):
        return self.rollback_step >= 0

    @property
    def model(self) -> nnx.Module:
        """The adapted model (one copy; for `ttt_adapt_many` use `copy(i)`)."""
        if self.losses.ndim != 1:
            raise ValueError(f"result holds {self.losses.shape[0]} copies; use result.copy(i)")
        return nnx.merge(self.layout.graphdef, self.params, self.rest)

    @property
    def n_copies(self) -> int | None:
        return None if self.losses.ndim == 1 else self.losses.shape[0]

    def copy(self, i: int) -> nnx.Module:
        """Adapted copy i of a `ttt_adapt_many` result."""
        n = self.n_copies
        if n is None:
            raise ValueError("result holds one copy; use result.model")
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n:
            raise ValueError(f"i={i!r}; expected an int in [0, {n})")
        return nnx.merge(self.layout.graphdef, jax.tree.map(lambda a: a[i], self.params), self.rest)


# -- input checks --------------------------------------------------------------


def _check_int(name, value, lo, hi=None):
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral)
    if bad or value < lo or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}={value!r}; expected an int {span}")
    return int(value)


def _check_steps(steps, n=None):
    """An int (one copy), or n ints [n] (ttt_adapt_many; an int is broadcast)."""
    if n is None or isinstance(steps, numbers.Integral):
        k = _check_int("steps", steps, 0)
        return k if n is None else np.full(n, k, np.int32)
    arr = np.asarray(steps)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise ValueError(f"steps={steps!r}; expected an int >= 0 or {n} ints >= 0")
    return arr.astype(np.int32)


def _check_lr(lr, n=None):
    arr = np.asarray(lr, dtype=np.float64) if not isinstance(lr, (str, bytes)) else np.asarray(np.nan)
    shapes = [()] if n is None else [(), (n,)]
    if arr.shape not in shapes or not (np.isfinite(arr).all() and (arr > 0).all()):
        want = "a finite float > 0" + ("" if n is None else f" or {n} of them")
        raise ValueError(f"lr={lr!r}; expected {want}")
    return arr.astype(np.float32) if n is None else np.broadcast_to(arr, (n,)).astype(np.float32)


def _check_prefix(model, prefix, mask, window):
    if isinstance(prefix, (list, tuple)):
        prefix = np.asarray(prefix)
    shape = tuple(getattr(prefix, "shape", ()))
    if len(shape) not in (1, 2) or not jnp.issubdtype(getattr(prefix, "dtype", np.float32), jnp.integer):
        raise ValueError(f"prefix has shape {shape} and dtype {getattr(prefix, 'dtype', None)}; "
                         "expected integer token ids [T] or [B, T]")
    tokens = jnp.asarray(prefix)[None] if len(shape) == 1 else jnp.asarray(prefix)
    if tokens.shape[1] < 2:
        raise ValueError(f"prefix has {tokens.shape[1]} token(s); expected at least 2 (one next-token target)")
    if tokens.shape[0] < 1:
        raise ValueError(f"prefix has shape {shape}; expected at least one row")
    V = model.cfg.vocab_size
    if not is_traced(tokens):
        t = np.asarray(tokens)
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"prefix contains token id {lo if lo < 0 else hi}; expected ids in [0, {V})")
    if mask is None:
        weights = jnp.ones(tokens.shape, jnp.float32)
    else:
        weights = jnp.asarray(mask, jnp.float32)
        weights = weights[None] if weights.ndim == 1 else weights
        if weights.shape != tokens.shape:
            raise ValueError(f"mask has shape {tuple(np.shape(mask))}; expected the prefix's shape {shape}")
    if window is not None:
        _check_int("window", window, 1, tokens.shape[1] - 1)
    return tokens.astype(jnp.int32), weights


def _check_tx(optimizer) -> optax.GradientTransformation:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r}; expected one of {OPTIMIZERS} or an optax transformation")
        return _named_tx(optimizer)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(f"optimizer={optimizer!r}; expected one of {OPTIMIZERS} or an optax transformation")
    return optimizer


def _plan(model, layout, *, scope, steps, window, order, last_k, lora_rank, lora_alpha, lora_targets) -> _Plan:
    if scope not in S.SCOPES:
        raise ValueError(f"scope={scope!r}; expected one of {S.SCOPES}")
    if order not in ORDERS:
        raise ValueError(f"order={order!r}; expected one of {ORDERS}")
    n_layers = model.cfg.n_layers
    last_k = _check_int("last_k", last_k, 1, n_layers)
    lora_rank = _check_int("lora_rank", lora_rank, 1)
    sel = S.select(layout.paths, scope, layers=block_layers(model, layout.paths), n_layers=n_layers,
                   last_k=last_k, lora_targets=tuple(lora_targets))
    if not sel:
        raise ValueError(f"scope={scope!r} selects no parameter of this model "
                         f"(layer kinds {model.cfg.layer_kinds}); expected a scope the model has")
    scale = None
    if scope == "lora":
        alpha = lora_rank if lora_alpha is None else lora_alpha
        if not (isinstance(alpha, numbers.Real) and np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"lora_alpha={lora_alpha!r}; expected None or a finite float > 0")
        scale = float(alpha) / lora_rank
    return _Plan(layout, tuple(sorted(sel.items(), key=lambda kv: str(kv[0]))), scale, lora_rank, steps,
                 window, order)


# -- the compiled core ---------------------------------------------------------


def _pieces(plan: _Plan, flat):
    """(init(key) -> trainable, full(trainable) -> flat params, drift(trainable) -> L2 change) for the plan."""
    sel = dict(plan.selection)
    if plan.lora_scale is not None:
        s = plan.lora_scale
        init = lambda key: L.init_lora(key, flat, list(sel), plan.lora_rank)
        full = lambda tr: L.merge_lora(flat, tr, s)
        drift = lambda tr: jnp.sqrt(sum(jnp.sum((s * jnp.matmul(ab["a"], ab["b"])) ** 2) for ab in tr.values()))
        return init, full, drift
    original = S.take(flat, sel)
    full = lambda tr: S.put(flat, sel, tr)
    drift = lambda tr: jnp.sqrt(sum(jnp.sum((tr[p] - original[p]) ** 2) for p in tr))
    return (lambda key: original), full, drift


def _fresh_state(plan: _Plan, tx, flat, key) -> AdaptState:
    trainable = _pieces(plan, flat)[0](key)
    return AdaptState(trainable, tx.init(trainable))


def _core(plan: _Plan, tx, flat, rest, tokens, weights, key, n_steps, lr, state):
    k_init, k_data = jax.random.split(key)
    _, full, drift_fn = _pieces(plan, flat)

    def loss_fn(tr, tok, w):
        model = plan.layout.merge(full(tr), rest)
        return next_token_loss(model(tok[:, :-1]), tok, w)

    state = _fresh_state(plan, tx, flat, k_init) if state is None else state
    trainable, opt_state, trace = adapt_loop(loss_fn, drift_fn, tx, state.trainable, state.opt_state,
                                             tokens=tokens, weights=weights, key=k_data, n_steps=n_steps, lr=lr,
                                             capacity=plan.capacity, window=plan.window, order=plan.order)
    return plan.layout.unflatten(full(trainable)), AdaptState(trainable, opt_state), trace


_run = jax.jit(_core, static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_many(plan, tx, flat, rest, tokens, weights, keys, n_steps, lr, state):
    axes = (None, None, None, None, 0, 0, 0, None if state is None else 0)
    return jax.vmap(functools.partial(_core, plan, tx), in_axes=axes)(flat, rest, tokens, weights, keys, n_steps,
                                                                        lr, state)


def _check_state(state, plan, tx, flat, n=None):
    if state is None:
        return None
    if not isinstance(state, AdaptState):
        raise ValueError(f"state is a {type(state).__name__}; expected None (reset) or the AdaptState of a "
                         "previous result (carry over)")
    want = jax.eval_shape(lambda: _fresh_state(plan, tx, flat, jax.random.key(0)))
    lead = () if n is None else (n,)
    same = jax.tree.structure(want) == jax.tree.structure(state) and all(
        tuple(np.shape(a)) == lead + tuple(b.shape) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want)))
    if not same:
        raise ValueError("state does not match this call; expected the AdaptState of a previous call with the same "
                         "scope, optimizer and model" + ("" if n is None else f" and n={n} copies"))
    return state


def _prepare(model, prefix, *, steps, lr, scope, optimizer, state, key, mask, window, order, last_k, lora_rank,
             lora_alpha, lora_targets, n=None):
    if not isinstance(model, HybridLM):
        raise ValueError(f"model is a {type(model).__name__}; expected a ttc_jax.nn.HybridLM")
    if n is not None:
        n = _check_int("n", n, 1)
    n_steps = _check_steps(steps, n)
    lr = _check_lr(lr, n)
    tx = _check_tx(optimizer)
    tokens, weights = _check_prefix(model, prefix, mask, window)
    layout, flat, rest = split_model(model)
    max_steps = int(np.max(n_steps)) if n is not None else n_steps
    capacity = 1 << max(max_steps - 1, 0).bit_length()
    plan = _plan(model, layout, scope=scope, steps=capacity, window=window, order=order, last_k=last_k,
                 lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets)
    key = jax.random.key(0) if key is None else key
    state = _check_state(state, plan, tx, flat, n)
    return plan, tx, flat, rest, tokens, weights, key, n_steps, lr, state


def _result(plan, rest, out) -> AdaptResult:
    params, state, t = out
    last = int(np.max(np.asarray(t["iterations"])))  # trim the static buffers to the iterations that ran
    return AdaptResult(plan.layout, params, rest, state, t["losses"][..., :last + 1], t["drift"][..., :last + 1],
                       t["final_drift"], t["steps_done"], t["rollback_step"])


def ttt_adapt(model: nnx.Module, prefix, *, steps: int, lr: float, scope: str = "all", optimizer="sgd",
              state: AdaptState | None = None, key=None, mask=None, window: int | None = None,
              order: str = "sequential", last_k: int = 1, lora_rank: int = 4, lora_alpha: float | None = None,
              lora_targets: Sequence[str] = S.LORA_TARGETS) -> AdaptResult:
    """Adapt a copy of `model`'s weights to `prefix` ([T] or [B, T] token ids) by `steps` optimizer steps on
    the next-token loss (dynamic evaluation). The model itself is never modified.

    scope: "all" | "lora" (rank-`lora_rank` adapters, scale lora_alpha / rank, on the `lora_targets`
    kernels) | "last_k" (the last `last_k` blocks) | "norms" | "ttt_w0" (TTT initial fast weights).
    optimizer: "sgd", "adam" or an optax transformation giving the update direction d (the step is
    p - lr * d, so pass e.g. optax.scale_by_adam(), not optax.adam(lr)).
    state: None starts from the model's weights with a fresh optimizer (reset); a previous result's
    `state` continues from its weights and optimizer state (carry-over; drift stays relative to `model`).
    mask: per-token weights of the targets (prefix shape). window: None uses the whole prefix at every
    step, else crops of window + 1 tokens taken in `order` ("sequential" segments, "random" from `key`).
    key: LoRA initialisation and random crops (default key 0).
    """
    args = _prepare(model, prefix, steps=steps, lr=lr, scope=scope, optimizer=optimizer, state=state, key=key,
                    mask=mask, window=window, order=order, last_k=last_k, lora_rank=lora_rank,
                    lora_alpha=lora_alpha, lora_targets=lora_targets)
    plan, tx, flat, rest = args[:4]
    return _result(plan, rest, _run(*args))


def copy_keys(key, n: int) -> jax.Array:
    """The per-copy keys `ttt_adapt_many` uses for one key: copy i equals ttt_adapt(..., key=keys[i])."""
    return jax.random.split(key, n)


def ttt_adapt_many(model: nnx.Module, prefix, *, n: int, steps, lr, key=None, scope: str = "all",
                   optimizer="sgd", state: AdaptState | None = None, mask=None, window: int | None = None,
                   order: str = "sequential", last_k: int = 1, lora_rank: int = 4,
                   lora_alpha: float | None = None, lora_targets: Sequence[str] = S.LORA_TARGETS) -> AdaptResult:
    """`n` adapted copies in one compiled call (`jax.vmap` over copies): copy i uses key copy_keys(key, n)[i],
    steps[i] (an int or n ints; fewer steps than the maximum are masked) and lr[i] (a float or n floats).
    Equal to a loop of `ttt_adapt` over copies. Result arrays have a leading [n] axis; `result.copy(i)`
    is copy i's model. Other arguments as `ttt_adapt`; `state` must come from a call with the same n.
    """
    args = _prepare(model, prefix, steps=steps, lr=lr, scope=scope, optimizer=optimizer, state=state, key=key,
                    mask=mask, window=window, order=order, last_k=last_k, lora_rank=lora_rank,
                    lora_alpha=lora_alpha, lora_targets=lora_targets, n=n)
    plan, tx, flat, rest, tokens, weights, key, n_steps, lr, state = args
    keys = copy_keys(key, n)
    return _result(plan, rest, _run_many(plan, tx, flat, rest, tokens, weights, keys, n_steps, lr, state))
