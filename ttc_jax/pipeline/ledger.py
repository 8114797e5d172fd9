"""The FLOP ledger of one query: what each executed computation cost, by phase and component.

Every entry is the analytic count (`ttc_jax.scaling.flops`) of a computation the pipeline actually ran,
at the shapes it ran with: rows that finished early still count while their batch decodes (they compute),
copies adapted fewer steps than the longest still count the longest (the batched loop runs them).
`spec` records those shapes so `ttc_jax.pipeline.xla` can recompile each computation and count it again.

Components: "adaptation" (ttt_adapt steps + the final check forward), "prefill" (prompt forward into
the KV cache), "decode" (one-token steps), "prm" (reward-model forward over prompt + candidate).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ttc_jax.scaling.allocate import ttt_adapt_flops
from ttc_jax.scaling.flops import decode_flops, forward_flops

COMPONENTS = ("adaptation", "prefill", "decode", "prm")


@dataclasses.dataclass(frozen=True)
class Entry:
    phase: str  # "probe" | "adapt" | "main"
    component: str  # one of COMPONENTS
    flops: float
    spec: dict  # the executed shapes (see the cost functions below)


@dataclasses.dataclass
class FlopLedger:
    entries: list[Entry] = dataclasses.field(default_factory=list)

    def add(self, phase: str, component: str, flops: float, **spec) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"component={component!r}; expected one of {COMPONENTS}")
        self.entries.append(Entry(phase, component, float(flops), spec))

    @property
    def total(self) -> float:
        return sum(e.flops for e in self.entries)

    def by_component(self) -> dict[str, float]:
        return {c: sum(e.flops for e in self.entries if e.component == c) for c in COMPONENTS}

    def by_phase(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for e in self.entries:
            out[e.phase] = out.get(e.phase, 0.0) + e.flops
        return out

    def to_dict(self) -> dict:
        return {"total": self.total, "by_component": self.by_component(), "by_phase": self.by_phase(),
                "entries": [dataclasses.asdict(e) for e in self.entries]}


# -- analytic costs of the executed computations ----------------------------------------------------

def prefill_cost(cfg: Any, *, rows: int, prompt_len: int, cache_size: int) -> float:
    """`rows` prompts of prompt_len tokens in one forward into a KV cache of cache_size (logits everywhere,
    as `ttc_jax.generate.prefill_prompts` computes them)."""
    return rows * forward_flops(cfg, prompt_len, cache_size=cache_size).total


def decode_cost(cfg: Any, *, rows: int, steps: int, start: int, cache_size: int) -> float:
    """`steps` one-token steps of `rows` rows from position `start` (each reads the whole cache)."""
    return rows * decode_flops(cfg, steps, start=start, cache_size=cache_size).total if steps else 0.0


def adapt_cost(cfg: Any, *, copies: int, steps: int, prefix_len: int) -> float:
    """`copies` copies adapted `steps` steps on a prefix of prefix_len tokens (scope "all": weight gradients
    of every layer; other scopes cost somewhat less)."""
    return copies * ttt_adapt_flops(cfg, prefix_len, steps)


def prm_cost(cfg: Any, *, rows: int, length: int) -> float:
    """Reward-model scores at every position of `rows` sequences of `length` tokens (scalar head)."""
    return rows * (forward_flops(cfg, length, logits="none", keep_state=False).total + 2.0 * cfg.d_model * length)
