"""A policy LM and a reward model behind the search interfaces (`expand`, `score`) and for candidate pools.

Text layout everywhere (as in training): PAD bytes on the left, then prompt, completion (and EOS
when finished), right-aligned to a common length. Lengths and row counts are rounded up to
buckets so a handful of shapes compile.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.generate import generate, sample
from ttc_jax.nn.model import HybridLM
from ttc_jax.nn.prm import RewardModel, aggregate, last_mask, score_candidates, step_mask

BUCKET = 16


def _round_up(x: int, b: int) -> int:
    return -(-x // b) * b


def _row_bucket(n: int, least: int = 64) -> int:
    """Rows padded to a power of two >= least, so search rounds reuse a few compiled shapes."""
    return max(least, 1 << max(0, (n - 1).bit_length()))


@dataclasses.dataclass
class TextCodec:
    """Byte-level text <-> ids with the task's special tokens."""

    sep: int
    eos: int
    pad: int

    def encode(self, text: str) -> list[int]:
        return list(text.encode("latin-1"))

    def decode(self, ids) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i != self.pad:
                out.append(i)
        return out.decode("latin-1")

    def right_aligned(self, seqs: Sequence[Sequence[int]], min_len: int = 1, rows: int | None = None) -> np.ndarray:
        """[rows, L] left-padded with PAD; L rounded up to BUCKET; extra rows repeat the last one."""
        L = _round_up(max(min_len, max(len(s) for s in seqs)), BUCKET)
        out = np.full((rows or len(seqs), L), self.pad, np.int32)
        for i in range(out.shape[0]):
            s = seqs[min(i, len(seqs) - 1)]
            out[i, L - len(s):] = s
        return out


class Policy:
    """Samples completions / next steps from a HybridLM policy."""

    def __init__(self, model: HybridLM, codec: TextCodec, *, temperature: float = 1.0, top_p: float | None = None,
                 max_step_tokens: int = 24, max_new_tokens: int = 96, max_rows: int = 1024):
        self.model, self.codec = model, codec
        self.temperature, self.top_p = float(temperature), top_p
        self.max_step_tokens, self.max_new_tokens, self.max_rows = max_step_tokens, max_new_tokens, max_rows

    def _key(self, rng: np.random.Generator) -> jax.Array:
        return jax.random.key(int(rng.integers(0, 2 ** 31 - 1)))

    def sample_pool(self, prompts: Sequence[str], n: int, rng: np.random.Generator, chunk: int = 16):
        """N full completions per prompt: (texts [P][N], finished [P][N], tokens [P, N, L] int32)."""
        texts, fins, toks = [], [], []
        for c0 in range(0, len(prompts), chunk):
            part = prompts[c0:c0 + chunk]
            rows = _round_up(len(part), chunk) if len(prompts) > chunk else len(part)
            x = self.codec.right_aligned([self.codec.encode(p) for p in part], rows=rows)
            s = sample(self.model, x, n=n, max_new_tokens=self.max_new_tokens, rng=self._key(rng),
                       temperature=self.temperature, top_p=self.top_p, stop_tokens=(self.codec.eos,),
                       pad_id=self.codec.pad)
            t = np.asarray(s.tokens)[: len(part)]
            f = np.asarray(s.finished)[: len(part)]
            toks.append(t)
            texts += [[self.codec.decode(r) for r in row] for row in t]
            fins += [[bool(v) for v in row] for row in f]
        return texts, fins, np.concatenate(toks, 0)

    def expand(self, prompts: Sequence[str], prefixes: Sequence[str], rng: np.random.Generator,
               greedy: bool = False) -> list[tuple[str, bool]]:
        """One next step per row: text through the separator, or through EOS (finished)."""
        out = []
        for c0 in range(0, len(prefixes), self.max_rows):
            ps, pre = prompts[c0:c0 + self.max_rows], prefixes[c0:c0 + self.max_rows]
            seqs = [self.codec.encode(p + q) for p, q in zip(ps, pre)]
            rows = _row_bucket(len(seqs))
            x = self.codec.right_aligned(seqs, rows=rows)
            t = np.asarray(generate(self.model, x, self.max_step_tokens, rng=self._key(rng),
                                    temperature=0.0 if greedy else self.temperature,
                                    top_p=None if greedy else self.top_p,
                                    stop_tokens=(self.codec.sep, self.codec.eos), pad_id=self.codec.pad))
            for r, q in zip(t[: len(seqs)], pre):
                ids = [int(v) for v in r]
                if self.codec.sep in ids[: ids.index(self.codec.eos) if self.codec.eos in ids else len(ids)]:
                    k = ids.index(self.codec.sep)
                    step = self.codec.decode(ids[: k + 1])
                    # a completion that runs past max_new_tokens is cut off: finished, without an answer
                    out.append((step, len(q) + len(step) >= self.max_new_tokens))
                else:  # EOS, or no separator within max_step_tokens: the completion ends here
                    out.append((self.codec.decode(ids), True))
        return out


class RewardScorer:
    """Step scores (PRM) or an end score (ORM) of completions from a RewardModel."""

    def __init__(self, model: RewardModel, codec: TextCodec, *, max_rows: int = 512):
        if model.separator != codec.sep:
            raise ValueError(f"reward model separator={model.separator} does not match the task's separator={codec.sep}")
        self.model, self.codec, self.max_rows = model, codec, max_rows

    def _layout(self, prompts, completions, finished):
        seqs, starts = [], []
        for p, c, f in zip(prompts, completions, finished):
            ids = self.codec.encode(p + c) + ([self.codec.eos] if f else [])
            seqs.append(ids)
            starts.append(len(self.codec.encode(p)))
        return seqs, starts

    def score_steps(self, prompts: Sequence[str], completions: Sequence[str],
                    finished: Sequence[bool] | None = None) -> list[list[float]]:
        """Per completion, the score at each of its step separators (PRM) or [end score] (ORM)."""
        finished = finished if finished is not None else [False] * len(completions)
        seqs, starts = self._layout(prompts, completions, finished)
        out: list[list[float]] = []
        for c0 in range(0, len(seqs), self.max_rows):
            part = seqs[c0:c0 + self.max_rows]
            rows = _row_bucket(len(part))
            x = self.codec.right_aligned(part, rows=rows)
            s = np.asarray(_score(self.model, jnp.asarray(x)))
            L = x.shape[1]
            for i, (q, st) in enumerate(zip(part, starts[c0:c0 + self.max_rows])):
                if self.model.kind == "orm":
                    out.append([float(s[i, L - 1])])
                    continue
                first = L - len(q) + st
                pos = [j for j in range(first, L) if x[i, j] == self.codec.sep]
                out.append([float(s[i, j]) for j in pos])
        return out

    def score_pool(self, tokens: np.ndarray, prompts: Sequence[str], chunk: int = 8):
        """Scores of a pool from `Policy.sample_pool` (tokens [P, N, L]) as one vmapped call per chunk of
        prompts: (step scores [P, N, S] with mask [P, N, S] for a PRM, or end scores [P, N] for an ORM)."""
        P, N, Lc = tokens.shape
        pl = [len(self.codec.encode(p)) for p in prompts]
        L = _round_up(max(pl) + Lc + 1, BUCKET)
        x = np.full((P, N, L), self.codec.pad, np.int32)
        start = np.zeros((P, N), np.int32)
        end = np.zeros((P, N), np.int32)
        for i in range(P):
            p = self.codec.encode(prompts[i])
            for j in range(N):
                c = [int(v) for v in tokens[i, j]]
                c = c[: c.index(self.codec.eos) + 1] if self.codec.eos in c else [v for v in c if v != self.codec.pad]
                seq = p + c
                x[i, j, L - len(seq):] = seq
                start[i, j] = L - len(c)
                end[i, j] = L - 1
        scores = np.concatenate([np.asarray(score_candidates(self.model, jnp.asarray(x[c0:c0 + chunk])))
                                 for c0 in range(0, P, chunk)], 0)
        if self.model.kind == "orm":
            return scores[:, :, L - 1]
        mask = np.asarray(step_mask(jnp.asarray(x), jnp.asarray(start), self.codec.sep))
        return scores, mask


@nnx.jit
def _score(model, x):
    return model(x)


def aggregate_pool(scores, mask, how: str) -> np.ndarray:
    return np.asarray(aggregate(jnp.asarray(scores), jnp.asarray(mask), how))
