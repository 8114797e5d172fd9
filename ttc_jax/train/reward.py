"""The reward-model objectives of `ttc train` (`objective` "prm" / "orm"): data, loss and validation.

Data is step-labelled JSONL (`ttc_jax.tasks.arithmetic.load_step_jsonl`): prompt, steps, per-step labels
and optionally the final-answer "outcome". Rows are laid out as the policy samples them (bytes; PAD on
the left, the prompt, steps each ended by the separator '\\n', EOS), by `ttc_jax.search.training.reward_batch`:

- prm: step i's label sits at its separator token;
- orm: one label at the last token: "outcome" when the row has it, else the last step's label.

Validation rows are `val_data`, or the rows of a `val_fraction` of `step_data`'s prompts (chosen by a hash
of the prompt, so the split does not depend on the file's order). With `synthetic` > 0 that fraction of
every training batch is the reference solution or a corrupted one (`corrupt_steps`, half each) of a
training prompt (arithmetic prompts only), labelled exactly.

Batch i is a pure function of (seed, i), so the iterator's state is the step count and a resumed run
sees the same batches as one that never stopped.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ttc_jax.nn.config import ModelConfig
from ttc_jax.nn.prm import RewardModel
from ttc_jax.search.diagnostics import auroc
from ttc_jax.search.training import reward_batch
from ttc_jax.tasks import arithmetic as A

Example = tuple[str, list[str], list[float], bool]  # (prompt, steps, labels, finished) for reward_batch


def build_reward_model(mcfg: ModelConfig, kind: str, seed: int) -> RewardModel:
    return RewardModel(mcfg, separator=A.SEP, kind=kind, rngs=nnx.Rngs(seed))


def load_rows(path: str, what: str) -> list[A.StepExample]:
    if not os.path.isfile(path):
        raise ValueError(f"{what}={path!r}: no such file; expected a step-labelled JSONL file")
    rows = A.load_step_jsonl(path)
    if not rows:
        raise ValueError(f"{what}={path!r} holds no examples")
    return rows


def is_validation_prompt(prompt: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    return h / 2.0 ** 64 < fraction


def as_example(e: A.StepExample, kind: str) -> Example:
    """An ORM's label (on every step; reward_batch reads the last) is the outcome, else the last step's label."""
    if kind == "orm":
        y = e.labels[-1] if e.outcome is None else e.outcome
        return e.prompt, list(e.steps), [y] * len(e.steps), True
    return e.prompt, list(e.steps), list(e.labels), True


def synthetic_example(prompt: str, rng: np.random.Generator, kind: str) -> Example:
    """The reference solution or a corrupted one (half each) of an arithmetic prompt, labelled exactly."""
    q = A.parse_prompt(prompt)
    steps = q.steps if rng.random() < 0.5 else A.corrupt_steps(q, rng)
    labels = A.exact_step_labels(q.prompt, "".join(s + "\n" for s in steps))
    if kind == "orm":
        labels = [float(A.verify_answer(q.prompt, "".join(s + "\n" for s in steps)))] * len(steps)
    return q.prompt, steps, labels, True


class StepData:
    """Training / validation examples of a reward-model run."""

    def __init__(self, tcfg):
        kind = tcfg.objective
        rows = load_rows(tcfg.step_data, "step_data (--data)")
        if tcfg.val_data:
            val = load_rows(tcfg.val_data, "val_data (--val-data)")
            held = {e.prompt for e in val}
            train = [e for e in rows if e.prompt not in held]
        else:
            train = [e for e in rows if not is_validation_prompt(e.prompt, tcfg.val_fraction)]
            val = [e for e in rows if is_validation_prompt(e.prompt, tcfg.val_fraction)]
        if not train or not val:
            raise ValueError(f"step_data={tcfg.step_data!r}: {len(train)} training and {len(val)} validation "
                             "rows; expected both non-empty (more prompts, or another val_fraction / --val-data)")
        self.kind = kind
        self.train = [as_example(e, kind) for e in train]
        self.val = [as_example(e, kind) for e in val]
        self.train_prompts = sorted({e.prompt for e in train})
        self.val_prompts = sorted({e.prompt for e in val})
        if tcfg.synthetic > 0:
            for p in self.train_prompts[:1] + self.val_prompts[:1]:
                try:
                    A.parse_prompt(p)
                except ValueError:
                    raise ValueError(f"synthetic={tcfg.synthetic}: the reference / corrupted stream needs "
                                     f"arithmetic prompts; step_data has prompt {p!r}") from None
            srng = np.random.default_rng(123)
            self.val_synthetic = [synthetic_example(p, srng, kind) for p in self.val_prompts for _ in (0, 1)]
        else:
            self.val_synthetic = []

    def stats(self) -> dict:
        def one(ex):
            labs = np.concatenate([np.asarray(e[2][-1:] if self.kind == "orm" else e[2], float) for e in ex])
            return {"rows": len(ex), "prompts": len({e[0] for e in ex}), "labels": int(labs.size),
                    "positive": float(labs.mean())}
        return {"train": one(self.train), "validation": one(self.val)}


class RewardBatches:
    """Training batches {"inputs", "labels", "weights"} [B, T]; batch i depends only on (seed, i, shard)."""

    def __init__(self, data: StepData, *, batch_size: int, seq_len: int, synthetic: float, max_left_pad: int,
                 seed: int, shard_index: int = 0):
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.synthetic, self.max_left_pad, self.seed, self.shard = synthetic, max_left_pad, seed, shard_index
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.step, self.shard])
        d = self.data
        ex = [synthetic_example(d.train_prompts[int(rng.integers(len(d.train_prompts)))], rng, d.kind)
              if rng.random() < self.synthetic else d.train[int(rng.integers(len(d.train)))]
              for _ in range(self.batch_size)]
        x, y, w = reward_batch(ex, self.seq_len, sep=A.SEP, eos=A.EOS, pad=A.PAD, kind=d.kind, rng=rng,
                               max_left_pad=self.max_left_pad)
        self.step += 1
        return {"inputs": x, "labels": y, "weights": w}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


# --- the functional core ----------------------------------------------------------------------------

def _logits(params, graphdef, tokens, ttt_lr_mult=1.0):
    model = nnx.merge(graphdef, params)
    _, h = model.backbone(tokens, return_hidden=True, ttt_lr_mult=ttt_lr_mult)
    return model.head(h)[..., 0]


def summed_bce(params, graphdef, batch: dict, ttt_lr_mult, with_stats: bool):
    """(sum of weighted BCE over labelled positions, (weight sum, {})): `make_train_step`'s loss_fn."""
    ce = optax.sigmoid_binary_cross_entropy(_logits(params, graphdef, batch["inputs"], ttt_lr_mult),
                                            batch["labels"])
    w = batch["weights"]
    return jnp.sum(ce * w), (jnp.sum(w), {})


def make_score_fn(graphdef):
    """score(params, tokens) -> sigmoid scores [B, T]. Jit it outside."""
    return lambda params, tokens: jax.nn.sigmoid(_logits(params, graphdef, tokens))


def evaluate_reward(score_fn, params, examples: Sequence[Example], *, kind: str, seq_len: int, batch_size: int,
                    n_batches: int | None = None) -> dict:
    """BCE, AUROC and mean scores of labelled positions over the first n_batches batches of `examples`
    (a fixed order; the last batch padded to batch_size with zero-weight rows)."""
    preds, labs = [], []
    stop = len(examples) if n_batches is None else min(len(examples), n_batches * batch_size)
    for c0 in range(0, stop, batch_size):
        part = list(examples[c0:min(c0 + batch_size, stop)])
        n = len(part)
        x, y, w = reward_batch(part + [part[-1]] * (batch_size - n), seq_len, sep=A.SEP, eos=A.EOS, pad=A.PAD,
                               kind=kind)
        s = np.asarray(score_fn(params, jnp.asarray(x)))
        keep = w[:n] > 0
        preds.append(s[:n][keep])
        labs.append(y[:n][keep])
    p, y = np.concatenate(preds).astype(np.float64), np.concatenate(labs).astype(np.float64)
    if not y.size:
        raise ValueError("no labelled positions in the validation rows (all truncated?); raise seq_len")
    q = np.clip(p, 1e-7, 1 - 1e-7)
    bce = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    hard = y >= 0.5
    return {"bce": bce, "auroc": auroc(p, y),  # None when one class is absent
            "n": int(y.size), "positive": float(y.mean()),
            "mean_score_positive": float(p[hard].mean()) if hard.any() else None,
            "mean_score_negative": float(p[~hard].mean()) if (~hard).any() else None}
